"""export's checks and QNN options: encodings of another model version are refused (--force goes on),
--batch-size writes static shapes, model.encodings carries quantsim's quantizer_args; and models
already quantized are named as what they are (QDQ or integer operators) by the quantizing commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from aimetcli.cli import main
from aimetcli.export import MISFIT_MARGIN_DB, weight_fits
from aimetcli.kernels.quant import encoding_from_range
from helpers import init, make_model, rand, run, to_ir

SAMPLE = Path(__file__).resolve().parent.parent / "sample_models" / "mobilenetv2_fmnist.onnx"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


def ok(result):
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result


# ----------------------------------------------------------------------------------
# encodings of another version of the model (issue 16 point 2)
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """The folded sample model, its equalized version, and each one's quantsim encodings
    (the folded one's with tf-enhanced per-channel ranges, which clip weights by design)."""
    d = tmp_path_factory.mktemp("versions")
    ok(invoke("fold-bn", SAMPLE, "-o", d / "folded.onnx", "-q"))
    ok(invoke("equalize", d / "folded.onnx", "-o", d / "eq.onnx", "-q"))
    ok(invoke("quantsim", d / "eq.onnx", "-o", d / "eq_sim.onnx", "--data", "random:8", "-q"))
    ok(invoke("quantsim", d / "folded.onnx", "-o", d / "folded_sim.onnx", "--data", "random:8", "-q",
              "--quant-scheme", "tf-enhanced", "--per-channel"))
    return d


def test_encodings_of_the_equalized_model_are_refused_for_the_folded_one(versions, tmp_path):
    out = tmp_path / "deploy"
    line = one_error_line(invoke("export", versions / "folded.onnx", "--encodings", versions / "eq_sim.encodings",
                                 "-o", out), 1)
    assert "weight 'features." in line and "% of its values outside its encoding's range" in line
    assert "another version of the model" in line and "--force" in line
    assert not out.exists()
    r = ok(invoke("export", versions / "folded.onnx", "--encodings", versions / "eq_sim.encodings", "-o", out,
                  "--force"))
    assert "Warning: weight 'features." in r.stderr and "exporting them anyway (--force)" in r.stderr
    assert (out / "model_qdq.onnx").exists()


def test_matching_encodings_pass_even_where_their_scheme_clips_weights(versions, tmp_path):
    for model, encodings in (("eq.onnx", "eq_sim.encodings"), ("folded.onnx", "folded_sim.encodings")):
        r = ok(invoke("export", versions / model, "--encodings", versions / encodings, "-o", tmp_path / model))
        assert "Warning" not in r.stderr, r.stderr
    # tf-enhanced did clip weights of the folded model: the check tells clipping from a mismatch
    from aimetcli import api
    from aimetcli.export import fill_axes, load_encodings_file, split

    model, _ = api.load(str(versions / "folded.onnx"))
    params = fill_axes(model, split(load_encodings_file(str(versions / "folded_sim.encodings"), model).encodings)[1])
    fits = weight_fits(model, params)
    assert any(f.outside > 0 for f in fits) and not any(f.misfit for f in fits)


def test_weight_fit_is_per_channel():
    """One channel of a per-channel weight twice as large as its encoding says: that channel's
    values lie outside, and its error is far above the weight's own range's."""
    w = rand(4, 3, 3, 3)
    mx = np.abs(w).reshape(4, -1).max(axis=1)
    enc = encoding_from_range(-mx, mx, 8, True, axis=0)
    model = to_ir(make_model([helper.make_node("Conv", ["x", "W"], ["y"])], [("x", [1, 3, 5, 5])], [("y", None)],
                             [init("W", w)]))
    assert not weight_fits(model, {"W": enc})[0].outside
    w[2] *= 2
    model = to_ir(make_model([helper.make_node("Conv", ["x", "W"], ["y"])], [("x", [1, 3, 5, 5])], [("y", None)],
                             [init("W", w)]))
    fit = weight_fits(model, {"W": enc})[0]
    assert 0 < fit.outside <= 0.25 and fit.db_worse > MISFIT_MARGIN_DB and fit.misfit


def test_force_without_encodings_file_is_a_usage_error(versions, tmp_path):
    line = one_error_line(invoke("export", versions / "eq_sim.onnx", "-o", tmp_path / "d", "--force"), 2)
    assert "--force" in line and "--encodings" in line
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------
# QNN: static shapes and quantizer_args (issue 16 point 8)
# ----------------------------------------------------------------------------------
def small_model(batch="N"):
    inits = [init("W1", rand(8, 3, 3, 3)), init("B1", rand(8)), init("shape", np.array([0, -1], np.int64)),
             init("W2", rand(8 * 16, 5))]
    nodes = [helper.make_node("Conv", ["input", "W1", "B1"], ["c1"], pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Reshape", ["r1", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "W2"], ["logits"])]
    return make_model(nodes, [("input", [batch, 3, 8, 8])], [("logits", None)], inits)


@pytest.fixture
def sim(tmp_path):
    def make(batch="N", *extra):
        src, out = tmp_path / "m.onnx", tmp_path / "sim.onnx"
        onnx.save(small_model(batch), src)
        ok(invoke("quantsim", src, "-o", out, "--data", "random:8", "-q", *extra))
        return out
    return make


def dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_batch_size_writes_static_shapes_in_both_models(sim, tmp_path):
    sim_path = sim()
    out = tmp_path / "deploy"
    r = ok(invoke("export", sim_path, "-o", out, "--batch-size", "4"))
    assert "batch dim is 4" in r.stderr + r.stdout
    x = rand(4, 3, 8, 8)
    for name in ("model.onnx", "model_qdq.onnx"):
        m = onnx.load(out / name)
        onnx.checker.check_model(m, full_check=True)
        assert [dims(v) for v in m.graph.input] == [[4, 3, 8, 8]]
        assert [dims(v) for v in m.graph.output] == [[4, 5]]
        weights = {t.name for t in m.graph.initializer}  # and what is computed from weights alone
        weights |= {n.output[0] for n in m.graph.node if n.input and n.input[0] in weights}
        activations = [v for v in m.graph.value_info if v.name not in weights and len(dims(v)) >= 2]
        assert activations and all(dims(v)[0] == 4 for v in activations), [(v.name, dims(v)) for v in activations]
    np.testing.assert_array_equal(run(onnx.load(out / "model_qdq.onnx"), {"input": x})[0],
                                  run(onnx.load(sim_path), {"input": x})[0])
    # without the option the batch dim stays dynamic
    ok(invoke("export", sim_path, "-o", tmp_path / "dyn"))
    assert dims(onnx.load(tmp_path / "dyn" / "model.onnx").graph.input[0])[0] == "N"


@pytest.mark.parametrize("args, code, says", [(["--batch-size", "0"], 2, "--batch-size"),
                                              (["--batch-size", "x"], 2, "--batch-size"),
                                              (["--batch-size", "4"], 2, "fixes its batch dim to 1")])
def test_bad_batch_size_is_one_line_and_writes_nothing(sim, tmp_path, args, code, says):
    sim_path = sim(1)
    out = tmp_path / "deploy"
    r = invoke("export", sim_path, "-o", out, *args)
    assert r.exit_code == code and says in r.stderr and "Traceback" not in r.output, r.stderr
    assert not out.exists()
    ok(invoke("export", sim_path, "-o", out, "--batch-size", "1"))  # the size it fixes is accepted


@pytest.mark.parametrize("extra", [[], ["--per-channel", "--param-bw", "4"]])
def test_exported_encodings_carry_quantsims_quantizer_args(sim, tmp_path, extra):
    sim_path = sim("N", *extra)
    ok(invoke("export", sim_path, "-o", tmp_path / "deploy"))
    written = json.loads((tmp_path / "sim.encodings").read_text())
    exported = json.loads((tmp_path / "deploy" / "model.encodings").read_text())
    assert written["quantizer_args"] and exported.get("quantizer_args") == written["quantizer_args"]
    assert exported == written  # the same file: model.onnx keeps the names quantsim's encodings use
    # an encodings file's quantizer_args go through as well
    ok(invoke("export", tmp_path / "m.onnx", "--encodings", tmp_path / "sim.encodings", "-o", tmp_path / "fp32"))
    again = json.loads((tmp_path / "fp32" / "model.encodings").read_text())
    assert again["quantizer_args"] == written["quantizer_args"]


# ----------------------------------------------------------------------------------
# models already quantized: QDQ or integer operators (issue 15)
# ----------------------------------------------------------------------------------
def integer_model() -> onnx.ModelProto:
    """What onnxruntime's quantize_dynamic writes for a MatMul: DynamicQuantizeLinear feeding
    MatMulInteger, the int32 result scaled back to float."""
    inits = [init("Wq", np.random.default_rng(0).integers(0, 255, (8, 4), dtype=np.uint8)),
             init("W_zp", np.uint8(128)), init("W_scale", np.float32(0.01))]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_scale", "x_zp"]),
             helper.make_node("MatMulInteger", ["xq", "Wq", "x_zp", "W_zp"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x_scale", "W_scale"], ["s"]),
             helper.make_node("Mul", ["acc_f", "s"], ["y"])]
    return make_model(nodes, [("x", ["N", 8])], [("y", None)], inits)


def qdq_model() -> onnx.ModelProto:
    """quantize_static's QDQ format: QuantizeLinear -> DequantizeLinear in front of a MatMul."""
    inits = [init("W", rand(8, 4)), init("s", np.float32(0.02)), init("z", np.uint8(128))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]),
             helper.make_node("MatMul", ["xdq", "W"], ["y"])]
    return make_model(nodes, [("x", ["N", 8])], [("y", None)], inits)


@pytest.mark.parametrize("command", ["quantsim", "bias-correct", "ptq"])
def test_already_quantized_models_are_named_as_what_they_are(tmp_path, command):
    out = tmp_path / ("out" if command == "ptq" else "out.onnx")
    onnx.save(integer_model(), tmp_path / "dyn.onnx")
    onnx.save(qdq_model(), tmp_path / "qdq.onnx")
    line = one_error_line(invoke(command, tmp_path / "dyn.onnx", "-o", out, "--data", "random:4"), 1)
    assert "already quantized with integer operators (DynamicQuantizeLinear, MatMulInteger" in line, line
    assert "quantize_dynamic" in line and "quantize the float model it came from" in line
    assert "quantsim output" not in line and "export" not in line
    line = one_error_line(invoke(command, tmp_path / "qdq.onnx", "-o", out, "--data", "random:4"), 1)
    assert "already quantized (2 QuantizeLinear/DequantizeLinear nodes" in line and "aimetcli export" in line, line
    assert "integer operators" not in line
    assert not out.exists()


def test_batch_size_where_inference_stops_short_follows_the_batch_name():
    """An op shape inference does not know (a custom domain's) leaves its output to what the model
    declared: a dim named as an input's batch dim is the same size, so it becomes N as well."""
    from aimetcli.export import set_batch_size

    node = helper.make_node("Mystery", ["x"], ["y"], domain="custom")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])])
    model = to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                          helper.make_opsetid("custom", 1)]))
    set_batch_size(model, 4)
    assert list(model.graph.inputs[0].shape) == [4, 3]
    out = list(model.graph.outputs[0].shape)
    assert out[0] == 4 and str(out[1]) == "K"
