"""equalize: exact cross-layer scaling on each chain kind, ReLU6 spellings, high-bias absorption."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from aimetcli import api
from aimetcli.bn_stats import read_bn_stats
from aimetcli.kernels import cle
from helpers import assert_same_outputs, bn_inits, bn_node, init, make_model, op_count, rand, run, to_ir

RNG = np.random.default_rng(7)


def spread_weights(shape, axis=0, decades=4):
    """Weights whose per-channel ranges span ``decades`` orders of magnitude along ``axis``."""
    w = RNG.standard_normal(shape).astype(np.float32)
    scales = 10.0 ** RNG.uniform(-decades / 2, decades / 2, shape[axis])
    bshape = [1] * len(shape)
    bshape[axis] = -1
    return (w * scales.reshape(bshape)).astype(np.float32)


def equalize(proto, **kw):
    model, _ = api.prepare(to_ir(proto))
    summary = api.equalize(model, api.EqualizeOptions(**kw))
    return model, summary


def conv_chain(act_nodes, groups2=1, cin=4, mid=8, cout=6):
    inits = [init("W1", spread_weights((mid, cin, 3, 3))), init("B1", rand(mid)),
             init("W2", spread_weights((cout, mid // groups2, 3, 3), axis=1)), init("B2", rand(cout))]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["y1"], name="c1", pads=[1] * 4)]
    prev = "y1"
    for i, (op, extra_inputs, attrs, extra_inits) in enumerate(act_nodes):
        nodes.append(helper.make_node(op, [prev, *extra_inputs], [f"a{i}"], **attrs))
        inits += extra_inits
        prev = f"a{i}"
    nodes.append(helper.make_node("Conv", [prev, "W2", "B2"], ["out"], name="c2", pads=[1] * 4, group=groups2))
    return make_model(nodes, [("x", [2, cin, 8, 8])], [("out", None)], inits)


ACTIVATIONS = {
    "relu": [("Relu", [], {}, [])],
    "none": [],
    "leaky": [("LeakyRelu", [], {"alpha": 0.1}, [])],
    "prelu_scalar": [("PRelu", ["slope"], {}, [init("slope", np.array([0.25], np.float32))])],
    "prelu_channel": [("PRelu", ["slope"], {}, [init("slope", RNG.uniform(0, 0.5, (8, 1, 1)).astype(np.float32))])],
}


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("groups2", [1, 2])
def test_conv_pair_scaling_is_exact(act, groups2):
    proto = conv_chain(ACTIVATIONS[act], groups2=groups2)
    model, summary = equalize(proto, high_bias_fold=False)
    assert summary.scaling_sets == 1
    assert_same_outputs(proto, model, {"x": rand(2, 4, 8, 8)})
    # after two-layer scaling, layer 1's output-channel ranges equal layer 2's input-channel ranges
    from aimetcli.layers import as_layer

    layers = {n.name: as_layer(n) for n in model.graph if n.op_type == "Conv"}
    r1 = layers["c1"].per_out_channel_abs_max(layers["c1"].weight_array())
    r2 = layers["c2"].per_in_channel_abs_max(layers["c2"].weight_array())
    np.testing.assert_allclose(r1, r2, rtol=1e-5)


def test_depthwise_triple_uses_cube_root_and_is_exact():
    c = 8
    inits = [init("W1", spread_weights((c, 4, 1, 1))), init("B1", rand(c)),
             init("W2", spread_weights((c, 1, 3, 3))), init("B2", rand(c)),
             init("W3", spread_weights((5, c, 1, 1), axis=1)), init("B3", rand(5))]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["y1"], name="pw1"),
        helper.make_node("Relu", ["y1"], ["a1"]),
        helper.make_node("Conv", ["a1", "W2", "B2"], ["y2"], name="dw", group=c, pads=[1] * 4),
        helper.make_node("Relu", ["y2"], ["a2"]),
        helper.make_node("Conv", ["a2", "W3", "B3"], ["out"], name="pw2"),
    ]
    proto = make_model(nodes, [("x", [2, 4, 6, 6])], [("out", None)], inits)
    model, summary = equalize(proto, high_bias_fold=False)
    assert summary.scaling_sets == 1 and summary.chains == [["pw1", "dw", "pw2"]]
    assert_same_outputs(proto, model, {"x": rand(2, 4, 6, 6)})
    # all three per-channel ranges equal cbrt(r1 r2 r3)
    from aimetcli.layers import as_layer

    layers = {n.name: as_layer(n) for n in model.graph if n.op_type == "Conv"}
    r1 = layers["pw1"].per_out_channel_abs_max(layers["pw1"].weight_array())
    r2 = layers["dw"].per_out_channel_abs_max(layers["dw"].weight_array())
    r3 = layers["pw2"].per_in_channel_abs_max(layers["pw2"].weight_array())
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    np.testing.assert_allclose(r2, r3, rtol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_convtranspose_chain_is_exact(groups):
    inits = [init("W1", spread_weights((4, 8 // groups, 3, 3), axis=1)), init("B1", rand(8)),
             init("W2", spread_weights((5, 8, 3, 3), axis=1))]
    nodes = [
        helper.make_node("ConvTranspose", ["x", "W1", "B1"], ["y1"], name="ct", group=groups, strides=[2, 2]),
        helper.make_node("Relu", ["y1"], ["a1"]),
        helper.make_node("Conv", ["a1", "W2"], ["out"], name="c2"),
    ]
    proto = make_model(nodes, [("x", [1, 4, 5, 5])], [("out", None)], inits)
    model, summary = equalize(proto, high_bias_fold=False)
    assert summary.scaling_sets == 1
    assert_same_outputs(proto, model, {"x": rand(1, 4, 5, 5)})


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_fully_connected_chain_is_exact(trans_b, op):
    if op == "MatMul" and trans_b:
        pytest.skip("MatMul has no transB")
    w1 = spread_weights((16, 10), axis=0) if trans_b else spread_weights((10, 16), axis=1)
    w2 = spread_weights((6, 16), axis=1) if trans_b else spread_weights((16, 6), axis=0)
    inits = [init("W1", w1), init("W2", w2)]
    attrs = {"transB": trans_b} if op == "Gemm" else {}
    nodes = [
        helper.make_node(op, ["x", "W1"], ["y1"], name="fc1", **attrs),
        helper.make_node("Relu", ["y1"], ["a1"]),
        helper.make_node(op, ["a1", "W2"], ["out"], name="fc2", **attrs),
    ]
    proto = make_model(nodes, [("x", [3, 10])], [("out", None)], inits)
    model, summary = equalize(proto, high_bias_fold=False)
    assert summary.scaling_sets == 1
    assert_same_outputs(proto, model, {"x": rand(3, 10)})


def test_branch_stops_chain_with_reason():
    inits = [init("W1", rand(4, 3, 1, 1)), init("W2", rand(4, 4, 1, 1))]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["y1"], name="c1"),
        helper.make_node("Conv", ["y1", "W2"], ["y2"], name="c2"),
        helper.make_node("Add", ["y1", "y2"], ["out"]),
    ]
    proto = make_model(nodes, [("x", [1, 3, 4, 4])], [("out", None)], inits)
    model, summary = equalize(proto)
    assert summary.scaling_sets == 0
    reasons = {s.layer: s.reason for s in summary.stops}
    assert "2 readers" in reasons["c1"]
    assert "Add" in reasons["c2"]


def relu6_chain(spelling: str):
    """conv -> Clip(0,6) -> conv in the given ONNX spelling, plus a Clip outside any chain."""
    inits = [init("W1", spread_weights((8, 3, 3, 3))), init("B1", rand(8)),
             init("W2", spread_weights((4, 8, 3, 3), axis=1))]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["y1"], name="c1", pads=[1] * 4)]
    opset = 13
    if spelling == "attributes":
        opset = 10
        nodes.append(helper.make_node("Clip", ["y1"], ["a1"], min=0.0, max=6.0))
        nodes.append(helper.make_node("Conv", ["a1", "W2"], ["y2"], name="c2", pads=[1] * 4))
        nodes.append(helper.make_node("Clip", ["y2"], ["out"], min=0.0, max=6.0))
    else:
        if spelling == "initializers":
            inits += [init("lo", np.array(0, np.float32)), init("hi", np.array(6, np.float32))]
        else:  # Constant nodes (PaddlePaddle)
            nodes.append(helper.make_node("Constant", [], ["lo"], value=init("lo_c", np.array(0, np.float32))))
            nodes.append(helper.make_node("Constant", [], ["hi"], value=init("hi_c", np.array(6, np.float32))))
        nodes.append(helper.make_node("Clip", ["y1", "lo", "hi"], ["a1"]))
        nodes.append(helper.make_node("Conv", ["a1", "W2"], ["y2"], name="c2", pads=[1] * 4))
        nodes.append(helper.make_node("Clip", ["y2", "lo", "hi"], ["out"]))
    return make_model(nodes, [("x", [1, 3, 6, 6])], [("out", None)], inits, opset=opset)


@pytest.mark.parametrize("spelling", ["attributes", "initializers", "constants"])
def test_relu6_replaced_only_inside_chains(spelling):
    proto = relu6_chain(spelling)
    model, summary = equalize(proto)
    assert summary.relu6_replaced == 1
    assert op_count(model, "Clip") == 1 and op_count(model, "Relu") == 1
    assert summary.scaling_sets == 1
    # small inputs keep activations below 6, where Relu == ReLU6
    x = rand(1, 3, 6, 6) * 1e-3
    np.testing.assert_allclose(run(model, {"x": x})[0], run(proto, {"x": x})[0], rtol=1e-4, atol=1e-6)


def test_keep_relu6_stops_chain():
    proto = relu6_chain("initializers")
    model, summary = equalize(proto, replace_relu6=False)
    assert summary.relu6_replaced == 0 and summary.scaling_sets == 0
    assert any("ReLU6" in s.reason for s in summary.stops)
    assert_same_outputs(proto, model, {"x": rand(1, 3, 6, 6)})


def bn_relu_chain(beta_shift=3.0, pads2=0):
    """Conv -> BN (betas around ``beta_shift``) -> Relu -> Conv with ``pads2`` zero padding."""
    inits = [init("W1", rand(8, 3, 3, 3)), init("W2", rand(4, 8, 3, 3))] + bn_inits("bn", 8)
    inits[3] = init("bn_b", (RNG.normal(0, 0.3, 8) + beta_shift).astype(np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["y1"], name="c1", pads=[1] * 4),
        bn_node("bn", "y1", "z1"),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("Conv", ["a1", "W2"], ["out"], name="c2", pads=[pads2] * 4),
    ]
    return make_model(nodes, [("x", [4, 3, 8, 8])], [("out", None)], inits)


def test_high_bias_absorption_moves_bias_and_updates_stats():
    proto = bn_relu_chain()
    model, summary = equalize(proto)
    assert len(summary.bias_absorbed) == 1
    stats = read_bn_stats(model)["z1"]
    # after absorption beta - 3|gamma| <= 0 in every channel
    assert np.all(stats.beta - 3 * np.abs(stats.gamma) <= 1e-9)
    # the function barely changes on data like the training data (BN input ~ its stats)
    from aimetcli.layers import as_layer

    def bias_of(m, name):
        return as_layer(next(n for n in m.graph if n.name == name)).bias.const_value.numpy().astype(np.float64)

    plain, _ = equalize(proto, high_bias_fold=False)
    plain_stats = read_bn_stats(plain)["z1"]
    c = np.maximum(0, plain_stats.beta - 3 * np.abs(plain_stats.gamma))
    assert np.count_nonzero(c) > 0
    np.testing.assert_allclose(bias_of(plain, "c1") - bias_of(model, "c1"), c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(plain_stats.beta - stats.beta, c, rtol=1e-9, atol=1e-9)


def test_bias_absorption_without_activation_is_exact_for_unpadded_layers():
    inits = [init("W1", rand(8, 3, 1, 1)), init("W2", rand(4, 8, 1, 1))] + bn_inits("bn", 8)
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["y1"], name="c1"),
        bn_node("bn", "y1", "z1"),
        helper.make_node("Conv", ["z1", "W2"], ["out"], name="c2"),
    ]
    proto = make_model(nodes, [("x", [2, 3, 5, 5])], [("out", None)], inits)
    model, summary = equalize(proto)
    assert len(summary.bias_absorbed) == 1
    np.testing.assert_allclose(read_bn_stats(model)["z1"].beta, 0.0, atol=1e-12)
    assert_same_outputs(proto, model, {"x": rand(2, 3, 5, 5)})


def test_equalize_twice_is_idempotent():
    proto = bn_relu_chain()
    model, _ = equalize(proto)
    once = {v.name: v.const_value.numpy().copy() for v in model.graph.initializers.values()}
    api.equalize(model)
    for name, arr in once.items():
        new = model.graph.initializers[name].const_value.numpy()
        np.testing.assert_allclose(new, arr, rtol=1e-4, atol=1e-4 * np.abs(arr).max())


def test_cle_kernels():
    s = cle.two_layer_scale(np.array([4.0, 0.0, 1.0]), np.array([1.0, 2.0, 0.0]))
    np.testing.assert_allclose(s, [2.0, 1.0, 1.0])
    s12, s23 = cle.three_layer_scale(np.array([8.0]), np.array([1.0]), np.array([1.0]))
    np.testing.assert_allclose([8 / s12[0], 1 * s12[0] / s23[0], 1 * s23[0]], [2.0, 2.0, 2.0])
    np.testing.assert_allclose(cle.absorbable_bias(np.array([5.0, 1.0]), np.array([1.0, 1.0]), through_relu=True), [2.0, 0.0])


def test_a_clone_shares_big_weights_and_passes_on_it_leave_the_original_alone(tmp_path):
    """api.clone shares the weights (read-only) instead of copying them, small ones too; equalizing
    and bias correcting the clone, which scale and rewrite weights, must not change the original."""
    from aimetcli.calibration.data import input_specs, open_data
    from aimetcli.quantsim.placement import QuantOptions

    # BN folding writes new (writable) weight arrays, which cross-layer scaling may scale in place
    inits = [init("W1", spread_weights((64, 16, 3, 3))), init("W2", spread_weights((32, 64, 3, 3), axis=1)),
             init("B2", rand(32))] + bn_inits("bn", 64)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1] * 4), bn_node("bn", "c1", "b1"),
             helper.make_node("Relu", ["b1"], ["r1"]), helper.make_node("Conv", ["r1", "W2", "B2"], ["out"], pads=[1] * 4)]
    model, _ = api.prepare(to_ir(make_model(nodes, [("x", [2, 16, 8, 8])], [("out", None)], inits)))
    api.fold_bn(model)
    before = {name: np.array(v.const_value.numpy()) for name, v in model.graph.initializers.items()}
    assert any(a.nbytes > 4096 for a in before.values())  # big enough to be shared
    copy = api.clone(model)
    shared = [n for n, v in copy.graph.initializers.items() if v.const_value is model.graph.initializers[n].const_value]
    assert "B2" in shared and "W2" in shared
    summary = api.equalize(copy)
    assert summary.scaling_sets == 1
    np.save(tmp_path / "x.npy", rand(8, 16, 8, 8))
    api.bias_correct(copy, open_data(str(tmp_path / "x.npy"), input_specs(copy)), QuantOptions(param_bw=4),
                     method="empirical")
    after = {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    # and the clone did change: its weights were scaled
    assert any(not np.array_equal(v.const_value.numpy(), before[n]) for n, v in copy.graph.initializers.items()
               if n in before and v.const_value.numpy().shape == before[n].shape)


@pytest.mark.parametrize("keep", [False, True])
def test_cli_says_when_relu6_replacement_changed_the_fp32_model(tmp_path, keep):
    from click.testing import CliRunner

    from aimetcli.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(relu6_chain("initializers"), src)
    args = ["equalize", str(src), "-o", str(tmp_path / "eq.onnx")] + (["--keep-relu6"] if keep else [])
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert ("Relu in place of ReLU6 changes the FP32 model" in r.stderr) is not keep


def _siamese(second_a: str, second_b: str, inits_extra=()):
    """Two branches a and b: Conv(W1) -> Relu -> Conv -> Relu, each branch's second conv reading
    ``second_a`` / ``second_b``; the output is |a - b| (CapSpot's Siamese matcher, every conv
    weight shared by its two branches)."""
    rng = np.random.default_rng(4)
    inits = [init("W1", rand(8, 3, 3, 3, rng=rng)), init("B1", rand(8, rng=rng)), init("W2", rand(6, 8, 3, 3, rng=rng)),
             init("B2", rand(6, rng=rng)), *inits_extra]
    nodes = []
    for side, second in (("a", second_a), ("b", second_b)):
        nodes += [helper.make_node("Conv", [side, "W1", "B1"], [f"{side}1"], name=f"conv1_{side}"),
                  helper.make_node("Relu", [f"{side}1"], [f"{side}r"]),
                  helper.make_node("Conv", [f"{side}r", second, "B2"], [f"{side}2"], name=f"conv2_{side}"),
                  helper.make_node("Relu", [f"{side}2"], [f"{side}o"])]
    nodes += [helper.make_node("Sub", ["ao", "bo"], ["d"]), helper.make_node("Abs", ["d"], ["y"])]
    return make_model(nodes, [("a", ["N", 3, 10, 10]), ("b", ["N", 3, 10, 10])], [("y", None)], inits)


def test_equalize_keeps_a_siamese_networks_weights_shared(tmp_path):
    """Both branches read the same weights, so cross-layer scaling scales them alike: the copies
    fold-bn and scaling made for each reader are one weight again (CapSpot's matcher went from
    59.9 to 118.8 MB), and the outputs are the original's."""
    from click.testing import CliRunner

    from aimetcli.cli import main

    proto = _siamese("W2", "W2")
    onnx.save(proto, tmp_path / "m.onnx")
    r = CliRunner().invoke(main, ["equalize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "e.onnx")])
    assert r.exit_code == 0, r.output
    out = onnx.load(tmp_path / "e.onnx")
    assert sorted(i.name for i in out.graph.initializer) == ["B1", "B2", "W1", "W2"]
    assert "shared by several layers" not in r.output
    feeds = {"a": rand(2, 3, 10, 10), "b": rand(2, 3, 10, 10)}
    assert_same_outputs(proto, out, feeds)
    # the weights were scaled (the model changed), and both branches read the one copy
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    assert not np.array_equal(weights["W1"], onnx.numpy_helper.to_array(proto.graph.initializer[0]))


def test_equalize_says_when_shared_weights_had_to_be_copied(tmp_path):
    """A weight shared by two layers that scaling treats differently (the convs before them
    differ) stays a copy a reader: equalize says so."""
    from click.testing import CliRunner

    from aimetcli.cli import main

    proto = _siamese("W2", "W2")
    # branch b's first conv gets its own weights: its scales, and so its W2 copy, differ
    rng = np.random.default_rng(8)
    proto.graph.initializer.append(init("W1b", rand(8, 3, 3, 3, rng=rng) * 4))
    for node in proto.graph.node:
        if node.name == "conv1_b":
            node.input[1] = "W1b"
    onnx.save(proto, tmp_path / "m.onnx")
    r = CliRunner().invoke(main, ["equalize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "e.onnx")])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    # B1 and W2: each branch's first conv scales its bias and the second conv's input channels otherwise
    assert "2 weight(s) shared by several layers (the first: B1)" in said, said
    assert_same_outputs(proto, onnx.load(tmp_path / "e.onnx"), {"a": rand(2, 3, 10, 10), "b": rand(2, 3, 10, 10)})
