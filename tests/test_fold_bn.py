"""fold-bn: numerical equivalence on hand-built graphs for every pattern, and skips with reasons."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from aimetcli import api, model_io
from aimetcli.bn_stats import read_bn_stats
from helpers import assert_same_outputs, finish, bn_inits, bn_node, init, make_model, op_count, rand, run, to_ir


def fold(proto: onnx.ModelProto):
    model, _ = api.prepare(to_ir(proto))
    result, summary = api.fold_bn(model)
    return model, summary


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("pads", [0, 1])
def test_conv_bn_backward(bias, groups, pads):
    cin, cout = 4, 8
    inits = [init("W", rand(cout, cin // groups, 3, 3))] + bn_inits("bn", cout)
    inputs = ["x", "W"]
    if bias:
        inits.append(init("B", rand(cout)))
        inputs.append("B")
    nodes = [
        helper.make_node("Conv", inputs, ["y"], name="conv", group=groups, pads=[pads] * 4),
        bn_node("bn", "y", "z"),
        helper.make_node("Relu", ["z"], ["out"]),
    ]
    proto = make_model(nodes, [("x", [2, cin, 9, 9])], [("out", None)], inits)
    model, summary = fold(proto)
    assert op_count(model, "BatchNormalization") == 0
    assert [p.direction for p in summary.folded] == ["backward"]
    assert_same_outputs(proto, model, {"x": rand(2, cin, 9, 9)})


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2])
def test_convtranspose_bn_backward(bias, groups):
    cin, cout = 4, 6
    inits = [init("W", rand(cin, cout // groups, 3, 3))] + bn_inits("bn", cout)
    inputs = ["x", "W"] + (["B"] if bias else [])
    if bias:
        inits.append(init("B", rand(cout)))
    nodes = [
        helper.make_node("ConvTranspose", inputs, ["y"], group=groups, strides=[2, 2], pads=[1, 1, 1, 1]),
        bn_node("bn", "y", "z"),
    ]
    proto = make_model(nodes, [("x", [1, cin, 5, 5])], [("z", None)], inits)
    model, summary = fold(proto)
    assert op_count(model, "BatchNormalization") == 0
    assert model.graph.outputs[0].name == "z"
    assert_same_outputs(proto, model, {"x": rand(1, cin, 5, 5)})


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("alpha_beta", [(1.0, 1.0), (0.5, 2.0)])
def test_gemm_bn_backward(trans_b, bias, alpha_beta):
    k, n = 5, 7
    w = rand(n, k) if trans_b else rand(k, n)
    inits = [init("W", w)] + bn_inits("bn", n)
    inputs = ["x", "W"] + (["C"] if bias else [])
    if bias:
        inits.append(init("C", rand(n)))
    nodes = [
        helper.make_node("Gemm", inputs, ["y"], transB=trans_b, alpha=alpha_beta[0], beta=alpha_beta[1]),
        bn_node("bn", "y", "z"),
    ]
    proto = make_model(nodes, [("x", [3, k])], [("z", None)], inits)
    model, _ = fold(proto)
    assert op_count(model, "BatchNormalization") == 0
    assert_same_outputs(proto, model, {"x": rand(3, k)})


def test_matmul_bn_backward_becomes_gemm():
    inits = [init("W", rand(5, 7))] + bn_inits("bn", 7)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), bn_node("bn", "y", "z")]
    proto = make_model(nodes, [("x", [3, 5])], [("z", None)], inits)
    model, _ = fold(proto)
    assert op_count(model, "BatchNormalization") == 0
    assert op_count(model, "Gemm") == 1 and op_count(model, "MatMul") == 0
    assert_same_outputs(proto, model, {"x": rand(3, 5)})


def test_matmul_3d_bn_is_skipped():
    inits = [init("W", rand(4, 4))] + bn_inits("bn", 6)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), bn_node("bn", "y", "z")]
    proto = make_model(nodes, [("x", [2, 6, 4])], [("z", None)], inits)
    model, summary = fold(proto)
    assert op_count(model, "BatchNormalization") == 1
    assert "channels" in summary.skipped[0].reason or "2-D" in summary.skipped[0].reason


@pytest.mark.parametrize("bias", [True, False])
def test_bn_conv_forward_unpadded(bias):
    cin, cout = 4, 6
    inits = [init("W", rand(cout, cin, 3, 3))] + bn_inits("bn", cin)
    inputs = ["z", "W"] + (["B"] if bias else [])
    if bias:
        inits.append(init("B", rand(cout)))
    nodes = [bn_node("bn", "x", "z"), helper.make_node("Conv", inputs, ["y"], name="conv")]
    proto = make_model(nodes, [("x", [2, cin, 7, 7])], [("y", None)], inits)
    model, summary = fold(proto)
    assert [p.direction for p in summary.folded] == ["forward"]
    assert op_count(model, "BatchNormalization") == 0
    assert_same_outputs(proto, model, {"x": rand(2, cin, 7, 7)})


@pytest.mark.parametrize("trans_b", [0, 1])
def test_bn_gemm_forward(trans_b):
    k, n = 6, 4
    inits = [init("W", rand(n, k) if trans_b else rand(k, n)), init("C", rand(n))] + bn_inits("bn", k)
    nodes = [bn_node("bn", "x", "z"), helper.make_node("Gemm", ["z", "W", "C"], ["y"], transB=trans_b)]
    proto = make_model(nodes, [("x", [3, k])], [("y", None)], inits)
    model, summary = fold(proto)
    assert [p.direction for p in summary.folded] == ["forward"]
    assert_same_outputs(proto, model, {"x": rand(3, k)})


def test_bn_into_padded_conv_is_skipped_with_reason():
    inits = [init("W", rand(4, 4, 3, 3))] + bn_inits("bn", 4)
    nodes = [bn_node("bn", "x", "z"), helper.make_node("Conv", ["z", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    proto = make_model(nodes, [("x", [1, 4, 5, 5])], [("y", None)], inits)
    model, summary = fold(proto)
    assert op_count(model, "BatchNormalization") == 1
    assert "pads its input" in summary.skipped[0].reason
    assert_same_outputs(proto, model, {"x": rand(1, 4, 5, 5)})


def test_branching_layer_output_is_skipped():
    inits = [init("W", rand(4, 3, 1, 1))] + bn_inits("bn", 4)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["y"], name="conv"),
        bn_node("bn", "y", "z"),
        helper.make_node("Relu", ["y"], ["r"]),
        helper.make_node("Add", ["z", "r"], ["out"]),
    ]
    proto = make_model(nodes, [("x", [1, 3, 4, 4])], [("out", None)], inits)
    model, summary = fold(proto)
    assert op_count(model, "BatchNormalization") == 1
    assert "also feeds" in summary.skipped[0].reason


def test_shared_weight_gets_private_copies():
    w = rand(4, 3, 3, 3)
    inits = [init("W", w)] + bn_inits("bn1", 4) + bn_inits("bn2", 4)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["y1"], pads=[1] * 4),
        bn_node("bn1", "y1", "z1"),
        helper.make_node("Conv", ["x", "W"], ["y2"], pads=[1] * 4),
        bn_node("bn2", "y2", "z2"),
        helper.make_node("Add", ["z1", "z2"], ["out"]),
    ]
    proto = make_model(nodes, [("x", [1, 3, 6, 6])], [("out", None)], inits)
    model, summary = fold(proto)
    assert len(summary.folded) == 2
    assert_same_outputs(proto, model, {"x": rand(1, 3, 6, 6)})


def test_non_constant_bn_params_are_skipped():
    inits = [init("W", rand(4, 3, 1, 1))] + bn_inits("bn", 4)[1:]
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]), bn_node("bn", "y", "z")]
    proto = make_model(nodes, [("x", [1, 3, 4, 4]), ("bn_g", [4])], [("z", None)], inits)
    model, summary = fold(proto)
    assert op_count(model, "BatchNormalization") == 1
    assert "not a constant" in summary.skipped[0].reason


def test_training_mode_bn_is_skipped():
    inits = [init("W", rand(4, 3, 1, 1))] + bn_inits("bn", 4)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["y"]),
        helper.make_node("BatchNormalization", ["y", "bn_g", "bn_b", "bn_m", "bn_v"], ["z"], training_mode=1),
    ]
    proto = make_model(nodes, [("x", [1, 3, 4, 4])], [("z", None)], inits, opset=15)
    _, summary = fold(proto)
    assert "training_mode" in summary.skipped[0].reason


def test_zero_variance_folds_and_negative_variance_is_skipped():
    inits = [init("W", rand(2, 3, 1, 1)), init("g", np.ones(2, np.float32)), init("b", np.zeros(2, np.float32)),
             init("m", np.zeros(2, np.float32)), init("v", np.array([0.0, -1.0], np.float32))]
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]),
             helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["z"], name="bn")]
    proto = make_model(nodes, [("x", [1, 3, 2, 2])], [("z", None)], inits)
    _, summary = fold(proto)
    assert "not positive" in summary.skipped[0].reason


def test_constant_node_weights_are_lifted_and_folded():
    w = rand(4, 3, 3, 3)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=init("Wc", w)),
        helper.make_node("Conv", ["x", "W"], ["y"], pads=[1] * 4),
        bn_node("bn", "y", "z"),
    ]
    proto = make_model(nodes, [("x", [1, 3, 5, 5])], [("z", None)], bn_inits("bn", 4))
    model, summary = fold(proto)
    assert len(summary.folded) == 1 and op_count(model, "Constant") == 0
    assert_same_outputs(proto, model, {"x": rand(1, 3, 5, 5)})


def test_bn_stats_round_trip(tmp_path):
    inits = [init("W", rand(4, 3, 1, 1))] + bn_inits("bn", 4)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]), bn_node("bn", "y", "z")]
    proto = make_model(nodes, [("x", [1, 3, 4, 4])], [("z", None)], inits)
    model, _ = fold(proto)
    path = tmp_path / "f.onnx"
    model_io.save_model(model, str(path))
    stats = read_bn_stats(model_io.load_model(str(path)).model)
    assert list(stats) == ["z"]
    gamma = onnx.numpy_helper.to_array(inits[1])
    beta = onnx.numpy_helper.to_array(inits[2])
    np.testing.assert_array_equal(stats["z"].gamma, gamma.astype(np.float64))
    np.testing.assert_array_equal(stats["z"].beta, beta.astype(np.float64))
    assert stats["z"].bn == "bn"


def test_float16_weights_fold():
    w = rand(4, 3, 3, 3).astype(np.float16)
    inits = [init("W", w)] + [init(t.name, onnx.numpy_helper.to_array(t).astype(np.float16)) for t in bn_inits("bn", 4)]
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]), bn_node("bn", "y", "z")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [1, 3, 5, 5])],
                              [helper.make_value_info("z", helper.make_tensor_type_proto(onnx.TensorProto.FLOAT16, None))], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    proto = finish(proto)
    model, summary = fold(proto)
    assert len(summary.folded) == 1
    x = rand(1, 3, 5, 5).astype(np.float16)
    a, b = run(proto, {"x": x})[0], run(model, {"x": x})[0]
    np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), rtol=1e-2, atol=1e-2)
