"""Models that compute in float16 (or bfloat16): upcast to float32 for quantization."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from aimetcli import api
from aimetcli.calibration.data import input_specs, open_data
from aimetcli.cli import main
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.passes.float16_to_float32 import Float16ToFloat32Pass
from aimetcli.quantsim.placement import QuantOptions
from helpers import to_ir


def half_model(elem=TensorProto.FLOAT16, np_type=np.float16) -> onnx.ModelProto:
    """Conv-Relu, a Cast to the model's type of a float32 side value, a ConstantOfShape of its type
    added in, pooling and a Gemm head: every place a float16 type can hide."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np_type), "W"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np_type), "B"),
             numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np_type), "W2"),
             numpy_helper.from_array(np.array([1, 10], np.int64), "shape"),
             numpy_helper.from_array(np.full(10, 0.25, np.float32), "side")]
    fill = numpy_helper.from_array(np.array([0.5], np_type), "fill")
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "W2"], ["g"], transB=1),
             helper.make_node("ConstantOfShape", ["shape"], ["k"], value=fill),
             helper.make_node("Cast", ["side"], ["s"], to=elem),
             helper.make_node("Add", ["g", "k"], ["g2"]),
             helper.make_node("Add", ["g2", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", elem, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_upcast_computes_the_float32_model_of_the_same_weights():
    """Every float16 tensor, type and type attribute becomes float32: the result is exactly the
    float32 model built from the float16 weights' values, and close to the float16 model."""
    half = half_model()
    model = to_ir(half)
    result = Float16ToFloat32Pass()(model)
    assert result.modified and result.upcast_from == ["float16"]
    assert result.tensors == 4  # W, B, W2 and ConstantOfShape's value
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto)
    used = {t.data_type for t in proto.graph.initializer} | {
        v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)}
    assert TensorProto.FLOAT16 not in used
    assert next(n for n in proto.graph.node if n.op_type == "Cast").attribute[0].i == TensorProto.FLOAT

    expected = half_model(TensorProto.FLOAT, np.float32)  # same random draws, never rounded to float16...
    for t in expected.graph.initializer:  # ...so round them as the float16 model stores them
        if t.data_type == TensorProto.FLOAT and t.name != "side":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16).astype(np.float32), t.name))
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float16)
    got = _run(proto, x.astype(np.float32))
    np.testing.assert_array_equal(got, _run(expected, x.astype(np.float32)))
    np.testing.assert_allclose(got, _run(half, x).astype(np.float32), rtol=2e-2, atol=2e-2)
    assert not Float16ToFloat32Pass()(model).modified  # idempotent


def test_upcast_keeps_bfloat16_values_exactly():
    values = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32).astype(ml_dtypes.bfloat16)
    tensor = numpy_helper.from_array(values, "w")
    assert tensor.data_type == TensorProto.BFLOAT16
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [4])], [tensor])
    model = to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    result = Float16ToFloat32Pass()(model)
    assert result.upcast_from == ["bfloat16"]
    w = model.graph.initializers["w"].const_value.numpy()
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, values.astype(np.float32))
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT and model.graph.outputs[0].dtype == ir.DataType.FLOAT


def test_quantsim_of_a_float16_model_quantizes_its_float32_version(tmp_path):
    src = tmp_path / "half.onnx"
    onnx.save(half_model(), src)
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float16))
    out = tmp_path / "sim.onnx"
    r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(out), "--data", str(tmp_path / "x.npy")])
    assert r.exit_code == 0, r.output
    assert "computes in float16: quantizing its float32 version" in r.output
    sim = onnx.load(out)
    assert sum(n.op_type == "QuantizeLinear" for n in sim.graph.node) >= 4
    assert sim.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    # the float16 model and its float32 sim compared on the same (float16) data
    r = CliRunner().invoke(main, ["evaluate", str(src), str(out), "--data", str(tmp_path / "x.npy"), "--json"])
    assert r.exit_code == 0, r.output
    assert "top-1 agreement" in r.output


@pytest.mark.parametrize("call", ["quantsim", "bias_correct", "ptq"])
def test_library_refuses_a_float16_model_with_the_fix(tmp_path, call):
    """Without the upcast quantsim would place no quantizer: the library says what to do instead."""
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 8, 8), np.float16))
    model, _ = api.prepare(to_ir(half_model()))
    data = open_data(str(tmp_path / "x.npy"), input_specs(model))
    with pytest.raises(AimetCliError) as err:
        if call == "quantsim":
            api.quantsim(model, data, QuantOptions())
        elif call == "bias_correct":
            api.bias_correct(model, data, QuantOptions(), method="empirical")
        else:
            api.ptq(model, data, None, QuantOptions(), outdir=str(tmp_path / "out"))
    assert err.value.kind is ErrorKind.INPUT
    assert "float16" in str(err.value) and "float32=True" in str(err.value)
    assert not (tmp_path / "out").exists()
