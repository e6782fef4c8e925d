"""fold-bn's fold of a constant per-channel Add / Sub / Mul after a layer (passes/fold_channel_affine.py):
numerical equivalence in onnxruntime without optimizations on hand-built graphs per pattern, the
skips with their reasons, and what it changes downstream (quantsim's placement, export's QDQ Conv)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from aimetcli import api
from aimetcli.cli import main
from aimetcli.passes.fold_channel_affine import per_channel
from helpers import assert_same_outputs, bn_inits, bn_node, init, make_model, op_count, rand, to_ir


def fold(proto: onnx.ModelProto):
    model, _ = api.prepare(to_ir(proto))
    _, summary = api.fold_bn(model)
    return model, summary


def conv_then(op: str, const_shape: tuple[int, ...], *, bias: bool = False, groups: int = 1, cout: int = 8,
              const_first: bool = False):
    cin = 4
    inits = [init("W", rand(cout, cin // groups, 3, 3)), init("c", rand(*const_shape) + 1.5)]
    inputs = ["x", "W"] + (["B"] if bias else [])
    if bias:
        inits.append(init("B", rand(cout)))
    nodes = [helper.make_node("Conv", inputs, ["y"], name="conv", group=groups, pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c", "y"] if const_first else ["y", "c"], ["z"], name="affine"),
             helper.make_node("Relu", ["z"], ["out"])]
    return make_model(nodes, [("x", [2, cin, 7, 7])], [("out", None)], inits)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (8, 1, 1), (1,), ()])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_then_constant_folds(op, shape, bias):
    proto = conv_then(op, shape, bias=bias)
    model, summary = fold(proto)
    assert op_count(model, op) == 0
    assert [(a.node, a.op, a.layer, a.channels) for a in summary.affine_folded] == [("affine", op, "conv", 8)]
    assert_same_outputs(proto, model, {"x": rand(2, 4, 7, 7)})


@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_constant_on_the_left_folds(op):
    proto = conv_then(op, (1, 8, 1, 1), const_first=True)
    model, summary = fold(proto)
    assert op_count(model, op) == 0 and len(summary.affine_folded) == 1
    assert_same_outputs(proto, model, {"x": rand(2, 4, 7, 7)})


def test_bias_add_becomes_the_conv_bias_exactly():
    """paddle2onnx's Conv -> Add(b [1, C, 1, 1]): the Add's constant is the new bias, bit for bit."""
    proto = conv_then("Add", (1, 8, 1, 1))
    model, _ = fold(proto)
    conv = next(n for n in model.graph if n.op_type == "Conv")
    c = onnx.numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "c"))
    np.testing.assert_array_equal(conv.inputs[2].const_value.numpy(), c.reshape(-1))
    assert_same_outputs(proto, model, {"x": rand(2, 4, 7, 7)}, rtol=0, atol=0)


@pytest.mark.parametrize("groups", [1, 2])
def test_bn_spelled_out_as_mul_add_folds_into_grouped_convtranspose(groups):
    """tf2onnx's BN: Mul(s) then Add(t) after the layer; both fold, a chain node by node."""
    cin, cout = 4, 6
    inits = [init("W", rand(cin, cout // groups, 3, 3)), init("s", rand(1, cout, 1, 1)), init("t", rand(1, cout, 1, 1))]
    nodes = [helper.make_node("ConvTranspose", ["x", "W"], ["y"], group=groups, strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["y", "s"], ["ys"]), helper.make_node("Add", ["ys", "t"], ["z"])]
    proto = make_model(nodes, [("x", [1, cin, 5, 5])], [("z", None)], inits)
    model, summary = fold(proto)
    assert op_count(model, "Mul") == op_count(model, "Add") == 0
    assert [a.op for a in summary.affine_folded] == ["Mul", "Add"]
    assert model.graph.outputs[0].name == "z"  # the graph output keeps its name
    assert_same_outputs(proto, model, {"x": rand(1, cin, 5, 5)})


def test_gemm_then_add_folds_into_its_c():
    inits = [init("W", rand(5, 7)), init("c", rand(7))]
    nodes = [helper.make_node("Gemm", ["x", "W"], ["y"], alpha=0.5), helper.make_node("Add", ["y", "c"], ["z"])]
    proto = make_model(nodes, [("x", [3, 5])], [("z", None)], inits)
    model, summary = fold(proto)
    assert op_count(model, "Add") == 0 and len(summary.affine_folded) == 1
    assert_same_outputs(proto, model, {"x": rand(3, 5)})


def test_add_before_and_mul_after_a_bn_fold_with_it():
    """Conv -> Add -> BN -> Mul: the Add folds first, so the BN has a Conv to fold into, then the Mul."""
    inits = [init("W", rand(8, 4, 3, 3)), init("c", rand(1, 8, 1, 1)), init("s", rand(1, 8, 1, 1))] + bn_inits("bn", 8)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("Add", ["y", "c"], ["yc"]),
             bn_node("bn", "yc", "yb"), helper.make_node("Mul", ["yb", "s"], ["z"])]
    proto = make_model(nodes, [("x", [2, 4, 6, 6])], [("z", None)], inits)
    model, summary = fold(proto)
    assert op_count(model, "BatchNormalization") == op_count(model, "Add") == op_count(model, "Mul") == 0
    assert len(summary.folded) == 1 and len(summary.affine_folded) == 2
    assert_same_outputs(proto, model, {"x": rand(2, 4, 6, 6)})


@pytest.mark.parametrize("shape, why", [
    ((7,), "not one value per output channel"),  # broadcasts along the width, not the channels
    ((1, 8, 7, 7), "not one value per output channel"),
    ((1, 1, 8, 1, 1), "not one value per output channel"),  # would make the output 5-D
])
def test_constants_that_are_not_per_channel_stay(shape, why):
    proto = conv_then("Add", shape)
    model, summary = fold(proto)
    assert op_count(model, "Add") == 1 and not summary.affine_folded
    assert [s.node for s in summary.affine_skipped] == ["affine"] and why in summary.affine_skipped[0].reason


def test_branching_layer_output_and_reversed_sub_stay():
    inits = [init("W", rand(8, 4, 1, 1)), init("c", rand(1, 8, 1, 1))]
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv"),
             helper.make_node("Add", ["y", "c"], ["z"], name="add"), helper.make_node("Relu", ["y"], ["r"])]
    proto = make_model(nodes, [("x", [1, 4, 3, 3])], [("z", None), ("r", None)], inits)
    _, summary = fold(proto)
    assert "also feeds other nodes" in summary.affine_skipped[0].reason
    _, summary = fold(conv_then("Sub", (1, 8, 1, 1), const_first=True))
    assert "subtracts the layer's output from a constant" in summary.affine_skipped[0].reason


def test_shared_weight_gets_a_private_copy():
    inits = [init("W", rand(8, 4, 1, 1)), init("s", rand(1, 8, 1, 1))]
    nodes = [helper.make_node("Conv", ["x", "W"], ["y1"]), helper.make_node("Mul", ["y1", "s"], ["z1"]),
             helper.make_node("Conv", ["x", "W"], ["z2"])]
    proto = make_model(nodes, [("x", [1, 4, 3, 3])], [("z1", None), ("z2", None)], inits)
    model, _ = fold(proto)
    assert op_count(model, "Mul") == 0
    assert_same_outputs(proto, model, {"x": rand(1, 4, 3, 3)})


def test_matmul_of_3d_inputs_is_no_candidate():
    """A transformer's MatMul -> Add(bias): no bias slot to fold into, and nothing to report."""
    inits = [init("W", rand(4, 6)), init("c", rand(6))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Add", ["y", "c"], ["z"])]
    model, summary = fold(make_model(nodes, [("x", [2, 3, 4])], [("z", None)], inits))
    assert op_count(model, "Add") == 1 and not summary.affine_folded and not summary.affine_skipped


def test_per_channel_against_numpy_broadcasting():
    """per_channel's vector is what broadcasting gives along axis 1, for every shape it accepts."""
    rng = np.random.default_rng(0)
    y = np.zeros((2, 5, 3, 4))
    for shape in [(), (1,), (5, 1, 1), (1, 5, 1, 1), (1, 1, 1, 1), (1, 1, 1)]:
        c = rng.standard_normal(shape)
        vec = per_channel(c, 4, 5)
        np.testing.assert_array_equal(np.broadcast_to(vec[None, :, None, None], y.shape), y + c)
    for shape in [(5,), (1, 5, 3, 1), (2, 5, 1, 1), (1, 1, 5, 1, 1)]:
        assert per_channel(np.ones(shape), 4, 5) is None


def _optimized_ops(path, tmp_path) -> list[str]:
    """The op types of ``path`` after onnxruntime's extended optimizations (its QDQ fusions)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def _model_qdq(runner, model, out) -> str:
    for args in (["quantsim", str(model), "-o", str(out / "sim.onnx"), "--data", "random:4"],
                 ["export", str(out / "sim.onnx"), "-o", str(out)]):
        res = runner.invoke(main, args)
        assert res.exit_code == 0, res.output
    return str(out / "model_qdq.onnx")


def test_folded_bias_add_makes_model_qdq_an_integer_conv(tmp_path):
    """Before the fold, model_qdq's Conv sits between DQ and a float Add: onnxruntime runs it in
    float, its weight dequantized on every run. After it, the Conv becomes a QLinearConv."""
    proto = conv_then("Add", (1, 8, 1, 1))
    src = tmp_path / "m.onnx"
    onnx.save(proto, src)
    runner = CliRunner()
    folded = tmp_path / "f.onnx"
    res = runner.invoke(main, ["fold-bn", str(src), "-o", str(folded), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    assert [a["op"] for a in doc["affine_folded"]] == ["Add"]
    assert onnx.load(src).SerializeToString() == proto.SerializeToString()  # the input is never modified
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before = _optimized_ops(_model_qdq(runner, src, tmp_path / "a"), tmp_path / "a")
    after = _optimized_ops(_model_qdq(runner, folded, tmp_path / "b"), tmp_path / "b")
    assert "QLinearConv" not in before and "Conv" in before
    assert "QLinearConv" in after and "Conv" not in after


def test_quantsim_warns_about_foldable_bias_adds_and_not_after_fold_bn(tmp_path):
    proto = conv_then("Add", (1, 8, 1, 1))
    model, _ = api.prepare(to_ir(proto))
    _, _, summary = api.quantsim(model, "random:2")
    assert any("1 layer is followed by a constant per-channel Add/Sub/Mul" in w and "fold-bn" in w
               for w in summary.warnings)
    api.fold_bn(model)
    _, _, summary = api.quantsim(model, "random:2")
    assert not any("Add/Sub/Mul" in w for w in summary.warnings)


def test_a_folded_bns_statistics_follow_a_mul_and_add_after_it():
    """Conv -> BN -> Mul(s) -> Add(t): the layer's output is s * BN + t, and the statistics
    high-bias absorption and analytical bias correction read say so, under the Add's name."""
    from aimetcli.bn_stats import read_bn_stats

    s, t = rand(1, 8, 1, 1), rand(1, 8, 1, 1)
    inits = [init("W", rand(8, 4, 3, 3)), init("s", s), init("t", t)] + bn_inits("bn", 8)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]), bn_node("bn", "y", "yb"),
             helper.make_node("Mul", ["yb", "s"], ["ys"]), helper.make_node("Add", ["ys", "t"], ["z"])]
    proto = make_model(nodes, [("x", [2, 4, 6, 6])], [("z", None)], inits)
    folded_bn_only = to_ir(proto)
    api.prepare(folded_bn_only)
    from aimetcli.passes.fold_batchnorm import FoldBatchNormPass

    FoldBatchNormPass()(folded_bn_only)
    before = read_bn_stats(folded_bn_only)["yb"]
    model, _ = fold(proto)
    after = read_bn_stats(model)
    assert list(after) == ["z"]
    np.testing.assert_allclose(after["z"].beta, before.beta * s.reshape(-1) + t.reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(after["z"].gamma, before.gamma * s.reshape(-1), rtol=1e-12)


def test_matmul_of_2d_inputs_then_add_becomes_a_gemm_with_that_bias():
    inits = [init("W", rand(5, 7)), init("c", rand(1, 7))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Add", ["y", "c"], ["z"])]
    proto = make_model(nodes, [("x", [3, 5])], [("z", None)], inits)
    model, summary = fold(proto)
    assert op_count(model, "Add") == op_count(model, "MatMul") == 0 and op_count(model, "Gemm") == 1
    assert model.graph.outputs[0].name == "z" and len(summary.affine_folded) == 1
    assert_same_outputs(proto, model, {"x": rand(3, 5)})
