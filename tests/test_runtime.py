"""aimetcli.runtime: each named policy sets the session options its docstring states, float feeds
are converted to the input's type, and onnxruntime's failures become one-line AimetCliErrors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from aimetcli import runtime
from aimetcli.errors import AimetCliError
from helpers import init, make_model, rand, to_ir


def _gemm():
    return to_ir(make_model([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], [("x", ["N", 8])],
                            [("y", None)], [init("W", rand(4, 8))]))


def _entry(options, key: str) -> str | None:
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # onnxruntime: no such entry
        return None


@pytest.mark.parametrize("policy, level, qdq_kept, mem_pattern", [
    (runtime.MEASURE, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, False, True),
    (runtime.SIMULATE, ort.GraphOptimizationLevel.ORT_DISABLE_ALL, False, True),
    (runtime.LOAD, ort.GraphOptimizationLevel.ORT_DISABLE_ALL, False, True),
    (runtime.FOLD_CONSTANTS, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, False, True),
    (runtime.DEPLOY, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, False, True),
    (runtime.SIMULATE_FUSED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, True, False),
])
def test_policies_set_their_session_options(policy, level, qdq_kept, mem_pattern):
    options = runtime.Session(_gemm(), policy)._session.get_session_options()
    assert options.graph_optimization_level == level
    assert (_entry(options, "session.disable_quant_qdq") == "1") is qdq_kept
    assert options.enable_mem_pattern is mem_pattern


def test_command_line_levels_name_policies():
    assert runtime.LEVELS == {"none": runtime.SIMULATE, "basic": runtime.FOLD_CONSTANTS, "all": runtime.DEPLOY}


def test_float_feeds_are_converted_to_the_input_type():
    model = _gemm()
    session = runtime.Session(model, runtime.SIMULATE)
    x = rand(3, 8)
    want = session.run({"x": x})[0]
    got = session.run({"x": x.astype(np.float64)})[0]
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_failures_are_one_line_errors():
    with pytest.raises(AimetCliError, match="^onnxruntime cannot load the model: ") as info:
        runtime.Session(b"not a model", runtime.SIMULATE)
    assert "\n" not in str(info.value)
    session = runtime.Session(_gemm(), runtime.SIMULATE)
    with pytest.raises(AimetCliError, match="^onnxruntime failed while running the model: ") as info:
        session.run({"x": rand(3, 5)})
    assert "\n" not in str(info.value)


def _batch_fixed_inside():
    """Inputs [N, 4], but a Reshape to [1, 4] inside (an export that fixed the batch): only runs of
    one sample work (found on khmersm's transformer, whose view() kept batch 1)."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Conv", ["img", "W", "B"], ["y"]),
             helper.make_node("Reshape", ["y", "shape"], ["yf"]),
             helper.make_node("Add", ["flat", "yf"], ["out"])]
    proto = make_model(nodes, [("x", [None, 4]), ("img", [None, 4, 1, 1])], [("out", None)],
                       [init("W", rand(4, 4, 1, 1)), init("B", rand(4)), init("shape", np.array([1, 4], np.int64))])
    return proto


def test_a_model_that_runs_one_sample_at_a_time_is_named_with_the_fix(tmp_path):
    from aimetcli import api
    from aimetcli.options import QuantOptions, RunOptions

    np.savez(tmp_path / "d.npz", x=rand(6, 4), img=rand(6, 4, 1, 1))
    data = str(tmp_path / "d.npz")
    with pytest.raises(AimetCliError, match="one sample at a time runs.*rerun with --batch-size 1"):
        api.quantsim(to_ir(_batch_fixed_inside()), data)
    api.quantsim(to_ir(_batch_fixed_inside()), data, QuantOptions(), RunOptions(batch_size=1))
    # bias correction's runs take more samples than the batch size, but one with --batch-size 1
    summary = api.bias_correct(to_ir(_batch_fixed_inside()), data, QuantOptions(), RunOptions(batch_size=1))
    assert summary.corrected


def test_a_failed_run_prints_no_onnxruntime_log_line(capfd):
    """Session.run reports a failure in one line of its own (the error): onnxruntime's logger,
    which writes to the process's stderr itself, stays quiet."""
    proto = _batch_fixed_inside()
    session = runtime.Session(to_ir(proto), runtime.SIMULATE)
    with pytest.raises(AimetCliError):
        session.run({"x": rand(3, 4), "img": rand(3, 4, 1, 1)})
    assert "onnxruntime" not in capfd.readouterr().err
