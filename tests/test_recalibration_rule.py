"""When ptq recalibrates a bias-corrected model: the corrected layers' bias moves measured in steps
of their outputs' grids (ptq_candidates.bias_moves_in_steps), against a closed form."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from aimetcli.kernels.quant import encoding_from_range
from aimetcli.ptq_candidates import RECALIBRATION_STEPS, bias_moves_in_steps, why_not_recalibrated
from helpers import to_ir


def _model(bias_a: np.ndarray | None, bias_b: np.ndarray):
    """x -> Conv a (3 -> 4, bias optional) -> Relu -> Conv b (4 -> 2, bias) -> y."""
    rng = np.random.default_rng(0)
    wa = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    wb = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb"),
             numpy_helper.from_array(bias_b.astype(np.float32), "bb")]
    a_inputs = ["x", "wa"]
    if bias_a is not None:
        inits.append(numpy_helper.from_array(bias_a.astype(np.float32), "ba"))
        a_inputs.append("ba")
    nodes = [helper.make_node("Conv", a_inputs, ["a"], name="conv_a"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wb", "bb"], ["y"], name="conv_b")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_bias_moves_are_the_largest_channel_move_over_the_output_grids_step():
    """conv_a had no bias (a move from 0) and its output grid has step 0.1; conv_b's moved by
    up to 0.3 on a grid of step 0.05; a layer whose output reaches no grid is left out."""
    before = _model(None, np.array([1.0, -1.0]))
    after = _model(np.array([0.02, -0.25, 0.1, 0.0]), np.array([1.3, -1.1]))
    grid_a = encoding_from_range(0.0, 25.5, 8, False)  # step 0.1
    grid_y = encoding_from_range(-6.4, 6.35, 8, False)  # step 0.05
    assert float(grid_a.scale) == pytest.approx(0.1) and float(grid_y.scale) == pytest.approx(0.05)
    moves = bias_moves_in_steps(before, after, ["conv_a", "conv_b"], {"a": grid_a, "y": grid_y})
    assert moves == pytest.approx([2.5, 6.0], rel=1e-5)
    # conv_a's output is read by the Relu alone: the Relu's grid is the one its move reaches
    assert bias_moves_in_steps(before, after, ["conv_a"], {"r": grid_a}) == pytest.approx([2.5], rel=1e-5)
    # never through another layer: conv_b's weights scale what reaches y
    assert bias_moves_in_steps(before, after, ["conv_a", "conv_b"], {"y": grid_y}) == pytest.approx([6.0], rel=1e-5)
    assert bias_moves_in_steps(before, after, ["conv_b"], {"a": grid_a}) == []


def test_recalibration_is_skipped_only_below_the_median_bound():
    assert why_not_recalibrated([]) is None  # nothing to measure: recalibrate
    assert why_not_recalibrated([RECALIBRATION_STEPS, RECALIBRATION_STEPS + 5, 0.0]) is None
    why = why_not_recalibrated([0.1, 0.5, 30.0])
    assert why is not None and "0.50 steps" in why
