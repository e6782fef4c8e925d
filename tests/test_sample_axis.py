"""Outputs whose samples are not on axis 0 (calibration/samples.py: SamplesFirst).

A recurrent model exported time-major (brainmaze's BiLSTM EEG model: logits [time, batch, 4]) gave
evaluate and ptq an internal error as soon as two runs held different numbers of samples: their
runs were joined along axis 0. The smallest graph: MatMul, then Transpose to [time, batch, classes]."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from aimetcli.cli import main
from helpers import init, make_model, rand

T, F, C = 5, 4, 3


def _time_major(declared: bool) -> onnx.ModelProto:
    w = rand(F, C)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Transpose", ["r"], ["y"], perm=[1, 0, 2])]
    model = make_model(nodes, [("x", ["batch", T, F])], [("y", [T, "batch", C])], [init("w", w)])
    if not declared:  # no shape anywhere: the sample axis is found on the first run
        model.graph.output[0].type.tensor_type.ClearField("shape")
        del model.graph.value_info[:]
    return model


@pytest.mark.parametrize("declared", [True, False])
def test_runs_are_joined_along_the_sample_axis(declared, tmp_path):
    """7 samples in runs of 3, 3 and 1: the joined output is [7, T, C], sample i's own values (the
    axis named 'batch' where declared, else the one as long as the run)."""
    from aimetcli.calibration.data import input_specs, open_data
    from aimetcli.steps.evaluate import model_outputs
    from helpers import to_ir

    model = to_ir(_time_major(declared))
    x = rand(7, T, F)
    w = model.graph.initializers["w"].const_value.numpy()
    np.save(tmp_path / "x.npy", x)
    data = open_data(str(tmp_path / "x.npy"), input_specs(model))
    out = model_outputs(model, data, batch_size=3)[0]
    np.testing.assert_allclose(out, np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)


def test_evaluate_and_ptq_run_a_time_major_model(tmp_path):
    onnx.save(_time_major(True), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", rand(7, T, F))
    runner = CliRunner()
    ptq = runner.invoke(main, ["ptq", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--data",
                               str(tmp_path / "x.npy"), "--batch-size", "3"])
    assert ptq.exit_code == 0, ptq.output
    ev = runner.invoke(main, ["evaluate", str(tmp_path / "m.onnx"), str(tmp_path / "out" / "sim.onnx"), "--data",
                              str(tmp_path / "x.npy"), "--batch-size", "3"])
    assert ev.exit_code == 0, ev.output
    assert "SQNR" in ev.stderr
