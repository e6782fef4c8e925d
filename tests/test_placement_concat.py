"""quantsim: a Concat of ranges too far apart for one grid keeps its inputs' own grids.

A YOLO head ends in Concat(boxes in pixels [0, 640], sigmoid scores [0, 1]); one 8-bit grid on
it has a step of ~2.5, so every score became 0 and the detector found nothing."""

from __future__ import annotations

import json

import numpy as np
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
