"""quantsim: a Concat of ranges too far apart for one grid keeps its inputs' own grids.

A YOLO head ends in Concat(boxes in pixels [0, 640], sigmoid scores [0, 1]); one 8-bit grid on
it has a step of ~2.5, so every score became 0 and the detector found nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper

from aimetcli.cli import main
from helpers import init, make_model, rand, run


def detector_head(box_scale: float = 640.0):
    """x -> Conv -> Sigmoid (4 class scores) and x -> Conv -> Sigmoid * 640 (4 box coordinates),
    concatenated on the channel axis: [N, 8, H, W], boxes first."""
    nodes = [
        helper.make_node("Conv", ["x", "Wb"], ["b"], name="box_conv"),
        helper.make_node("Sigmoid", ["b"], ["bs"], name="box_sigmoid"),
        helper.make_node("Mul", ["bs", "img"], ["boxes"], name="box_scale"),
        helper.make_node("Conv", ["x", "Wc"], ["c"], name="cls_conv"),
        helper.make_node("Sigmoid", ["c"], ["scores"], name="cls_sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1, name="head"),
    ]
    inits = [init("Wb", rand(4, 3, 1, 1)), init("Wc", rand(4, 3, 1, 1)), init("img", np.float32(box_scale))]
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", None)], inits)


def sqnr(ref, got) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2)))


def activation_encodings(tmp_path) -> set[str]:
    return {e["name"] for e in json.loads((tmp_path / "sim.encodings").read_text())["activation_encodings"]}


def quantsim(tmp_path, proto, *flags):
    import onnx

    onnx.save(proto, tmp_path / "m.onnx")
    x = rand(32, 3, 8, 8, rng=np.random.default_rng(1))
    np.savez(tmp_path / "x.npz", x=x)
    result = CliRunner().invoke(main, ["quantsim", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "sim.onnx"),
                                       "--data", str(tmp_path / "x.npz"), *flags])
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result, run(proto, {"x": x})[0], run(str(tmp_path / "sim.onnx"), {"x": x})[0]


def test_scores_survive_a_concat_with_boxes_in_pixels(tmp_path):
    result, ref, got = quantsim(tmp_path, detector_head(), "-v")
    assert sqnr(ref[:, 4:], got[:, 4:]) > 30  # with the Concat's grid: every score 0, ~0 dB
    assert sqnr(ref[:, :4], got[:, :4]) > 30
    assert ("not quantized: y: Concat of ranges too far apart for one grid: its input scores would keep"
            in " ".join(result.stderr.split()))


def test_concat_of_similar_ranges_keeps_its_output_quantizer(tmp_path):
    result, _, _ = quantsim(tmp_path, detector_head(box_scale=4.0), "--json", "-q")
    doc = json.loads(result.stdout)
    assert not any(s["tensor"] == "y" for s in doc["skipped"])
    assert "y" in activation_encodings(tmp_path)


def test_dropped_concat_quantizer_is_not_in_the_encodings(tmp_path):
    result, _, _ = quantsim(tmp_path, detector_head(), "--json", "-q")
    doc = json.loads(result.stdout)
    assert any(s["tensor"] == "y" and "Concat" in s["reason"] for s in doc["skipped"])
    names = activation_encodings(tmp_path)
    assert "y" not in names and {"boxes", "scores"} <= names


def _judged(proto, tmp_path):
    """(judge, sim, x, FP32 output, sim output) for ``proto`` on 16 random samples, W4A4."""
    from aimetcli import api, model_io
    from aimetcli.calibration.data import input_specs, open_data
    from aimetcli.options import QuantOptions
    from aimetcli.ptq_judge import Judge
    from helpers import to_ir

    model, _ = api.prepare(to_ir(proto))
    data = open_data("random:16", input_specs(model))
    sim, _, _ = api.quantsim(api.clone(model), data, QuantOptions(param_bw=4, act_bw=4))
    x = np.concatenate([b["x"] for b in data.batches(16)])
    model_io.save_model(sim, str(tmp_path / "sim.onnx"))
    return Judge(model, data, 8), sim, x, run(proto, {"x": x})[0], run(str(tmp_path / "sim.onnx"), {"x": x})[0]


def test_ptq_judges_a_detector_head_on_boxes_and_scores_apart(tmp_path):
    """ptq's judge scores a Concat of ranges too far apart on each input relative to itself: the
    SQNR is that of the mean relative error of boxes and scores (the whole output's SQNR is the
    boxes' alone)."""
    proto = detector_head()
    judge, sim, x, ref, got = _judged(proto, tmp_path)
    assert judge._parts == ["boxes", "scores"]
    score = judge.score(sim)
    rel = [np.sum((ref[:, s] - got[:, s]).astype(np.float64) ** 2) / np.sum(ref[:, s].astype(np.float64) ** 2)
           for s in (slice(0, 4), slice(4, 8))]
    assert score.sqnr_db == pytest.approx(-10 * np.log10(np.mean(rel)), abs=1e-3)
    assert len(score.noise) == 16
    # a model whose scores alone are off: the whole output's SQNR hides it, the judge's does not
    from onnx import numpy_helper

    from helpers import to_ir

    off = type(proto)()
    off.CopyFrom(proto)
    wc = next(t for t in off.graph.initializer if t.name == "Wc")
    wc.CopyFrom(init("Wc", 0.8 * numpy_helper.to_array(wc)))

    bad = judge.score(to_ir(off))
    wrong = run(off, {"x": x})[0]
    rel_scores = np.sum((ref[:, 4:] - wrong[:, 4:]).astype(np.float64) ** 2) / np.sum(ref[:, 4:].astype(np.float64) ** 2)
    assert bad.sqnr_db == pytest.approx(-10 * np.log10(rel_scores / 2), abs=0.01)
    assert sqnr(ref, wrong) > bad.sqnr_db + 40


def test_ptq_judges_a_concat_of_similar_ranges_on_its_output(tmp_path):
    judge, sim, x, ref, got = _judged(detector_head(box_scale=4.0), tmp_path)
    assert judge._parts is None
    assert judge.score(sim).sqnr_db == pytest.approx(sqnr(ref, got), abs=1e-3)
