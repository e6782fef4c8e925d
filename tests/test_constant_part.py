"""aimetcli.constant_part and runtime.Session's use of it: a sim's nodes that read only initializers
(weight QuantizeLinear -> DequantizeLinear, the bias grid) are computed once and fed, and every
output stays the same bit for bit as onnxruntime's run of the whole graph without optimizations."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from aimetcli import constant_part, runtime
from helpers import init, make_model, rand, to_ir


def _sim(m: int = 96, d: int = 256) -> onnx.ModelProto:
    """x [N, d] -> Q/DQ -> MatMul(per-column Q/DQ of W [d, m]) -> + bias on its int32 grid (Div,
    Round, Clip, Mul) -> Relu -> Q/DQ: a sim's shape, opset 13."""
    w = rand(d, m)
    s_w = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "s_x", "z_x"], ["x_dq"]),
        helper.make_node("QuantizeLinear", ["W", "s_w", "z_w"], ["W_q"], axis=1),
        helper.make_node("DequantizeLinear", ["W_q", "s_w", "z_w"], ["W_dq"], axis=1),
        helper.make_node("MatMul", ["x_dq", "W_dq"], ["mm"]),
        helper.make_node("Div", ["b", "s_b"], ["b_div"]),
        helper.make_node("Round", ["b_div"], ["b_round"]),
        helper.make_node("Clip", ["b_round", "b_min", "b_max"], ["b_clip"]),
        helper.make_node("Mul", ["b_clip", "s_b"], ["b_grid"]),
        helper.make_node("Add", ["mm", "b_grid"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["act"]),
        helper.make_node("QuantizeLinear", ["act", "s_y", "z_y"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "s_y", "z_y"], ["y"]),
    ]
    inits = [init("W", w), init("s_w", s_w), init("z_w", np.zeros(m, np.int8)),
             init("s_x", np.array(0.02, np.float32)), init("z_x", np.array(0, np.int8)),
             init("b", rand(m)), init("s_b", s_w * np.float32(0.02)),
             init("b_min", np.array(-2.0**31, np.float32)), init("b_max", np.array(2.0**31 - 1, np.float32)),
             init("s_y", np.array(0.05, np.float32)), init("z_y", np.array(0, np.uint8))]
    return make_model(nodes, [("x", ["N", d])], [("y", None)], inits)


def _plain(proto: onnx.ModelProto, x: np.ndarray, all_outputs: bool = False):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outs = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    return outs if all_outputs else outs[0]


def test_the_constant_part_is_the_weight_and_bias_chains():
    graph = _sim().graph
    names = [graph.node[i].output[0] for i in constant_part.constant_nodes(graph)]
    assert names == ["W_q", "W_dq", "b_div", "b_round", "b_clip", "b_grid"]
    assert constant_part.read_by_rest(graph, constant_part.constant_nodes(graph)) == ["W_dq", "b_grid"]


def test_a_simulated_session_feeds_the_constant_part_and_gives_the_same_bits():
    """runtime.SIMULATE computes W_dq and b_grid once, feeds them, and every run's outputs equal
    onnxruntime's run of the whole graph (no optimizations) bit for bit, the MatMul's float output
    too: fed as inputs, not initializers, the values are not prepacked (a prepacked 768 x 192
    weight sums in another order and changes last bits)."""
    proto = _sim(192, 768)
    proto.graph.output.append(onnx.ValueInfoProto(name="pre"))
    x = rand(16, 768, scale=3.0)
    session = runtime.Session(to_ir(proto), runtime.SIMULATE)
    assert set(session.fed) == {"W_dq", "b_grid"}
    for got, want in zip(session.run({"x": x}), _plain(proto, x, all_outputs=True)):
        assert np.array_equal(got, want)
    for policy in (runtime.MEASURE, runtime.LOAD):  # only the simulating policies
        assert not runtime.Session(to_ir(proto), policy).fed


def test_nothing_is_cut_past_the_limit(monkeypatch):
    monkeypatch.setattr(runtime, "CONSTANT_PART_LIMIT", 1024)
    proto = _sim()
    x = rand(4, 256)
    session = runtime.Session(to_ir(proto), runtime.SIMULATE)
    assert not session.fed
    assert np.array_equal(session.run({"x": x})[0], _plain(proto, x))


def test_what_is_not_constant():
    """A node reading a graph input, a random draw, a node making a graph output, an initializer
    a feed may override (listed as a graph input) and what follows them are not constant."""
    nodes = [
        helper.make_node("Neg", ["A"], ["a1"]),                  # constant
        helper.make_node("RandomNormalLike", ["A"], ["r"]),      # a draw
        helper.make_node("Add", ["r", "a1"], ["r1"]),            # reads the draw
        helper.make_node("Abs", ["A"], ["out2"]),                # makes a graph output
        helper.make_node("Neg", ["B"], ["b1"]),                  # B is also a graph input
        helper.make_node("Add", ["x", "a1"], ["s1"]),            # reads x
        helper.make_node("Sum", ["s1", "r1", "b1"], ["y"]),
    ]
    proto = make_model(nodes, [("x", [2]), ("B", [2])], [("y", None), ("out2", None)],
                       [init("A", rand(2)), init("B", rand(2))])
    graph = proto.graph
    assert [graph.node[i].output[0] for i in constant_part.constant_nodes(graph)] == ["a1"]


def test_a_value_a_subgraph_reads_stays_available():
    """An If branch reads the initializer W (outer scope) that the constant part also reads, and
    the constant part's output Wn: W stays an initializer, Wn is fed, the outputs are the same."""
    then = helper.make_graph([helper.make_node("Add", ["x", "W"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Sub", ["x", "Wn"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Neg", ["W"], ["Wn"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    proto = make_model(nodes, [("x", [3])], [("y", None)], [init("W", rand(3)), init("zero", np.zeros((), np.float32))])
    session = runtime.Session(to_ir(proto), runtime.SIMULATE)
    assert set(session.fed) == {"Wn"}
    for x in (np.ones(3, np.float32), -np.ones(3, np.float32)):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        want = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
        assert np.array_equal(session.run({"x": x})[0], want[0])
