"""ranges says why it has no row (it printed an empty table: a wheel's model with its network
inside an If, and one whose weights were all computed at run time)."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import helper

from aimetcli.cli import main
from helpers import init, make_model, rand
from test_placement_control_flow import if_model


def _ranges(tmp_path, proto) -> tuple[str, dict]:
    onnx.save(proto, tmp_path / "m.onnx")
    result = CliRunner().invoke(main, ["ranges", str(tmp_path / "m.onnx"), "--json"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    return " ".join(result.stderr.split()), json.loads(result.stdout)


def test_ranges_names_the_subgraph_it_does_not_read(tmp_path):
    text, doc = _ranges(tmp_path, if_model(conv_outside=False))
    assert doc["layers"] == []
    assert ("No weight ranges to show: no Conv, ConvTranspose, Gemm or MatMul in the main graph; 4 nodes inside "
            "the subgraphs of If 'sr_branch' (4 nodes), which ranges does not read.") in text


def test_ranges_names_the_reason_its_layers_have_no_constant_weight(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    text, doc = _ranges(tmp_path, make_model(nodes, [("x", [2, 3]), ("w", [3, 4])], [("y", None)], []))
    assert doc["layers"] == []
    assert "1 Conv/ConvTranspose/Gemm/MatMul in the main graph, none with constant float weights" in text
    assert "weight w of fc is a graph input, not a constant" in text


def test_ranges_with_a_weight_has_its_table_and_no_such_line(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    text, doc = _ranges(tmp_path, make_model(nodes, [("x", [2, 3])], [("y", None)], [init("w", rand(3, 4))]))
    assert len(doc["layers"]) == 1 and "No weight ranges" not in text
    assert np.isfinite(doc["layers"][0]["spread"])


def test_ranges_says_a_quantize_dynamic_model_is_quantized_already(tmp_path):
    """A quantize_dynamic output (pyfrspell's lemma model from a wheel) has integer weights: ranges
    says so, as the quantizing commands do, instead of 'no Conv ... in the main graph' alone."""
    from test_export_checks import integer_model

    text, doc = _ranges(tmp_path, integer_model())
    assert doc["layers"] == []
    assert "quantized with integer operators (DynamicQuantizeLinear, MatMulInteger" in text
    assert "show the float model it came from" in text
