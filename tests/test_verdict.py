"""The check/verdict type of skip reasons (issue 17, item 3): ok, or the reason a node is skipped."""

from __future__ import annotations

import pytest
from onnx import helper

from aimetcli.layers import as_layer, check_rewrite, check_weight, weight_reason
from aimetcli.verdict import OK, Verdict, ok, skip
from helpers import init, make_model, rand, to_ir


def test_a_verdict_is_truthy_when_ok_and_carries_its_match():
    assert OK and OK.ok and OK.reason is None and OK.match is None
    found = ok("the layer")
    assert found and found.match == "the layer"
    no = skip("followed by Add")
    assert not no and not no.ok and no.reason == "followed by Add" and no.match is None
    assert ok() is OK
    with pytest.raises(ValueError):
        skip("")


def gemm(transA: int) -> Verdict:
    model = to_ir(make_model([helper.make_node("Gemm", ["x", "W"], ["y"], transA=transA, name="fc")],
                             [("x", [4, 3] if transA else [3, 4])], [("y", None)], [init("W", rand(4, 5))]))
    return as_layer(next(iter(model.graph)))


def test_layer_checks_give_the_reason_texts_of_before():
    layer = gemm(transA=1)
    assert not check_weight(layer) and check_weight(layer).reason == "Gemm fc has transA=1"
    assert check_rewrite(layer).reason == "Gemm fc has transA=1"
    assert weight_reason(layer) == "Gemm fc has transA=1"  # what adaround.py reads
    fine = gemm(transA=0)
    assert check_weight(fine) is OK and check_rewrite(fine).ok and weight_reason(fine) is None
