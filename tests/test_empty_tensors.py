"""A tensor with a dimension of length 0 in every sample has nothing to quantize: quantsim leaves it
float with the reason instead of refusing ("calibration saw no finite value ...; check the calibration
data"). brainmaze's spindle U-Net pads its segmentation head with ConstantOfShape([N, 0, 1]) * -1e9,
empty for its own input length. The smallest graph: an empty Slice of the input, scaled, concatenated."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from aimetcli.cli import main
from helpers import init, make_model, rand


def _padded() -> onnx.ModelProto:
    nodes = [helper.make_node("Slice", ["x", "zero", "zero", "one"], ["empty"]),
             helper.make_node("Mul", ["empty", "big"], ["pad"]),
             helper.make_node("Concat", ["x", "pad"], ["c"], axis=1),
             helper.make_node("MatMul", ["c", "w"], ["y"])]
    return make_model(nodes, [("x", ["batch", 3])], [("y", None)],
                      [init("w", rand(3, 2)), init("big", np.array(-1e9, np.float32)),
                       numpy_helper.from_array(np.array([0], np.int64), "zero"),
                       numpy_helper.from_array(np.array([1], np.int64), "one")])


@pytest.mark.parametrize("scheme", ["min-max", "tf-enhanced"])
def test_an_empty_tensor_stays_float_with_the_reason(tmp_path, scheme):
    onnx.save(_padded(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", rand(8, 3))
    runner = CliRunner()
    out = runner.invoke(main, ["quantsim", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "sim.onnx"), "--data",
                               str(tmp_path / "x.npy"), "--quant-scheme", scheme, "-v"])
    assert out.exit_code == 0, out.output
    assert "pad: empty in every calibration sample" in " ".join(out.stderr.split())
    ptq = runner.invoke(main, ["ptq", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--data",
                               str(tmp_path / "x.npy")])
    assert ptq.exit_code == 0, ptq.output


def test_a_tensor_of_nan_is_still_refused(tmp_path):
    """No finite value but NaN seen: the data's fault, said as before."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    onnx.save(make_model(nodes, [("x", ["batch", 3])], [("y", None)], [init("w", rand(3, 2))]), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.full((4, 3), np.nan, np.float32))
    out = CliRunner().invoke(main, ["quantsim", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "sim.onnx"), "--data",
                                    str(tmp_path / "x.npy")])
    assert out.exit_code != 0 and "Traceback" not in out.output
    assert not (tmp_path / "sim.onnx").exists()


@pytest.mark.parametrize("command", ["quantsim", "ptq"])
def test_a_model_with_nothing_to_quantize_is_refused_up_front(tmp_path, command):
    """atspm-detector's decode model is one ai.onnx.ml TreeEnsemble on float64: quantsim placed 0
    quantizers and exit 0, and ptq printed nan gains for an FP32 model it called quantized. The
    smallest graph: an ONNX-ML op alone."""
    node = helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml", norm="L2")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, ["n", 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, ["n", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    out = CliRunner().invoke(main, [command, str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--data", "random:4"])
    assert out.exit_code == 1, out.output
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and "nothing to quantize" in lines[0] and "ai.onnx.ml::Normalizer x1" in lines[0]
    assert not (tmp_path / "out").exists()
