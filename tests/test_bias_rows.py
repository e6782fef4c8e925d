"""bias-correct means a channel over every row of a layer output, not over samples.

A CRNN/LSTM recognizer reshapes [T, N, H] to [T*N, H] before its classifier Gemm:
that output has T rows a sample, and dividing the FP32 sum by N made the bias shift
T times too large.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from aimetcli import api
from aimetcli.calibration.data import input_specs, open_data
from aimetcli.cli import main
from aimetcli.kernels.quant import fake_quantize
from aimetcli.quantsim.placement import QuantOptions
from helpers import init, make_model, to_ir

RNG = np.random.default_rng(3)
H, O = 6, 5
W = (RNG.standard_normal((H, O)) * np.array([1, 4, 0.3, 2, 1, 0.5])[:, None]).astype(np.float32)
B = RNG.standard_normal(O).astype(np.float32)
BASE = (RNG.standard_normal((64, H)) * 1.5 + 0.7).astype(np.float32)  # N samples of H features


def recognizer_head() -> onnx.ModelProto:
    """x [N, T, H] -> Transpose [T, N, H] -> Reshape [T*N, H] -> Gemm [T*N, O]."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["t", "shape"], ["rows"]),
             helper.make_node("Gemm", ["rows", "W", "B"], ["y"], name="classifier")]
    inits = [init("W", W), init("B", B), init("shape", np.array([-1, H], np.int64))]
    return make_model(nodes, [("x", ["N", "T", H])], [("y", None)], inits)


def data(steps: int) -> np.ndarray:
    """Every time step of a sample holds the same features: the rows' distribution does not depend on T."""
    return np.ascontiguousarray(np.repeat(BASE[:, None, :], steps, axis=1))


def closed_form_bias(x: np.ndarray, tmp_path) -> np.ndarray:
    """B + mean over all T*N rows of (FP32 output - quantized output), with quantsim's grids."""
    model, _ = api.prepare(to_ir(recognizer_head()))
    dataset = open_dataset(model, x, tmp_path, "ref.npy")
    _, encs, _ = api.quantsim(model, dataset, QuantOptions(), run=api.RunOptions(batch_size=64))
    rows = x.reshape(-1, H).astype(np.float64)
    rows_q = fake_quantize(x, encs.activations["x"]).reshape(-1, H).astype(np.float64)
    wq = fake_quantize(W, encs.params["W"]).astype(np.float64)
    diff = rows @ W.astype(np.float64) - rows_q @ wq
    assert np.max(np.abs(diff.mean(axis=0))) > 1e-3  # a shift to correct
    return B.astype(np.float64) + diff.mean(axis=0)


def open_dataset(model, x: np.ndarray, tmp_path, name: str = "x.npy"):
    np.save(tmp_path / name, x)
    return open_data(str(tmp_path / name), input_specs(model))


def corrected_bias(model) -> np.ndarray:
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    return gemm.inputs[2].const_value.numpy().astype(np.float64)


@pytest.mark.parametrize("steps", [1, 4, 9])
def test_library_mean_is_over_every_row(tmp_path, steps):
    x = data(steps)
    model, _ = api.prepare(to_ir(recognizer_head()))
    dataset = open_dataset(model, x, tmp_path)
    api.bias_correct(model, dataset, QuantOptions(), method="empirical", run=api.RunOptions(batch_size=64))
    expected = closed_form_bias(x, tmp_path)
    np.testing.assert_allclose(corrected_bias(model), expected, rtol=0, atol=1e-5)
    # the same rows spread over more time steps: the same correction
    np.testing.assert_allclose(expected, closed_form_bias(data(1), tmp_path), rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 7])
def test_cli_writes_the_row_mean_correction(tmp_path, steps):
    x = data(steps)
    onnx.save(recognizer_head(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(main, ["bias-correct", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "bc.onnx"),
                                       "--data", str(tmp_path / "x.npy"), "--method", "empirical"])
    assert result.exit_code == 0, result.output
    out = onnx.load(tmp_path / "bc.onnx")
    bias = next(onnx.numpy_helper.to_array(t) for t in out.graph.initializer
                if t.name == next(n for n in out.graph.node if n.op_type == "Gemm").input[2])
    np.testing.assert_allclose(bias.astype(np.float64), closed_form_bias(data(1), tmp_path), rtol=0, atol=1e-5)


def test_several_runs_average_the_row_means(tmp_path, monkeypatch):
    """More data than one run takes: each run's FP32 means are over its own rows too."""
    from aimetcli import runtime

    monkeypatch.setattr(runtime, "correction_run_size", lambda model, dataset, batch_size: 16)
    x = data(5)
    model, _ = api.prepare(to_ir(recognizer_head()))
    dataset = open_dataset(model, x, tmp_path)
    summary = api.bias_correct(model, dataset, QuantOptions(), method="empirical", run=api.RunOptions(batch_size=16))
    assert summary.runs == 4
    np.testing.assert_allclose(corrected_bias(model), closed_form_bias(x, tmp_path), rtol=0, atol=1e-5)


def sequence_linear(constant_first: bool = False) -> onnx.ModelProto:
    """x [N, T, H] -> MatMul W [H, O] -> Add b [O] (a linear layer over a sequence, as exporters write it)."""
    add_inputs = ["B", "m"] if constant_first else ["m", "B"]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="linear"),
             helper.make_node("Add", add_inputs, ["y"], name="bias")]
    return make_model(nodes, [("x", ["N", "T", H])], [("y", None)], [init("W", W), init("B", B)])


def test_sequence_matmul_is_skipped_and_its_shift_measured_over_its_last_axis(tmp_path):
    """An N-D MatMul is not corrected (its bias would be the Add after it: on the PP-OCR recognizers
    correcting those cost exact text reads), and output_shift means its channels on the last axis."""
    from helpers import output_shift

    x = data(4)

    def prepared():
        return api.prepare(to_ir(sequence_linear()))[0]

    reference = prepared()
    dataset = open_dataset(reference, x, tmp_path)
    corrected = prepared()
    summary = api.bias_correct(corrected, dataset, QuantOptions(), method="empirical",
                               run=api.RunOptions(batch_size=64))
    assert summary.corrected == []
    assert summary.skipped == [("linear", "MatMul without a bias input whose input is not known to be 2-D")]
    sim = api.quantsim(corrected, dataset, QuantOptions(), run=api.RunOptions(batch_size=64))[0]
    expected = float(np.mean(np.abs(closed_form_bias(x, tmp_path) - B)))
    assert output_shift(reference, sim, dataset)["m"] == pytest.approx(expected, rel=1e-4)
