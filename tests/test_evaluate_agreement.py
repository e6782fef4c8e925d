"""evaluate's top-1 agreement only where an output holds classes: a row per sample and a class
axis (axis 1 of [N, C] and NCHW, or the axis of the Softmax that computes it). Found on a CRNN
captcha reader (output [T, N, C], time first: agreement was taken over the batch axis, and with
several runs over time steps of other samples) and a GRU encoder ([N, L, D] states)."""

from __future__ import annotations

import numpy as np
from onnx import helper

from aimetcli import api
from helpers import init, make_model, rand, to_ir

RNG = np.random.default_rng(3)


def _agreement(a: np.ndarray, b: np.ndarray, samples: int):
    return api.compare_outputs([[a], [b]], None, ["a", "b"], samples, ["y"]).top1_agreement


def test_classifier_rows_and_nchw_maps_keep_their_agreement():
    a, b = RNG.standard_normal((6, 10)), RNG.standard_normal((6, 10))
    assert _agreement(a, b, 6) == 100.0 * np.mean(a.argmax(1) == b.argmax(1))
    a, b = RNG.standard_normal((2, 5, 4, 4)), RNG.standard_normal((2, 5, 4, 4))
    assert _agreement(a, b, 2) == 100.0 * np.mean(a.argmax(1) == b.argmax(1))


def test_no_agreement_without_a_row_per_sample_or_a_class_axis():
    assert _agreement(RNG.standard_normal((20, 4, 37)), RNG.standard_normal((20, 4, 37)), 4) is None  # [T, N, C]
    assert _agreement(RNG.standard_normal((4, 1, 8, 8)), RNG.standard_normal((4, 1, 8, 8)), 4) is None  # one map
    assert _agreement(RNG.standard_normal((4, 9, 16)), RNG.standard_normal((4, 9, 16)), 4) is None  # [N, L, D]?


def test_a_softmax_names_the_class_axis_through_evaluate(tmp_path):
    """A recognizer's [N, T, C] probabilities: agreement per sample and position over C."""
    wa, wb = rand(6, 5), rand(6, 5)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    models = [to_ir(make_model(nodes, [("x", [None, 7, 6])], [("probs", None)], [init("W", w)])) for w in (wa, wb)]
    x = RNG.standard_normal((4, 7, 6)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    res = api.evaluate(models, str(tmp_path / "x.npz"))
    assert res.top1_agreement == 100.0 * np.mean((x @ wa).argmax(-1) == (x @ wb).argmax(-1))
