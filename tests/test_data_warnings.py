"""What the data options assume gets one warning line that says how to say otherwise (issue 16
point 3), --center-crop, and the --mean/--std wording on one-channel images (point 7)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from aimetcli.calibration.data import ImageOptions, InputSpec, image_options, open_data
from aimetcli.cli import main
from helpers import init, rand

MEAN_STD_WARNING = "images are fed as pixel/255 in [0, 1], not normalised"
SQUASH_WARNING = "are squashed: give --center-crop"
RANDOM_WARNING = "random data (standard-normal noise) gives poor calibration ranges"


def warnings_of(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [ln for ln in result.stderr.splitlines() if ln.startswith("Warning: ")]


def conv_model_path(tmp_path, channels=3, hw=(4, 4)) -> str:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, *hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, *hw])
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1] * 4)], "g", [x], [y],
                              [init("W", rand(2, channels, 3, 3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return str(path)


def write_image(path, arr):
    pil = pytest.importorskip("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.fromarray(np.asarray(arr, np.uint8)).save(path)


def solid(h, w, value=128):
    return np.full((h, w, 3), value, np.uint8)


def quantsim(runner, tmp_path, model, *args):
    return runner.invoke(main, ["quantsim", model, "-o", str(tmp_path / "sim.onnx"), *args])


# ---------------------------------------------------------------- image normalisation


def test_image_folder_without_mean_std_warns(tmp_path, runner):
    pytest.importorskip("PIL")
    write_image(tmp_path / "img" / "a.png", solid(4, 4))
    model = conv_model_path(tmp_path)
    found = warnings_of(quantsim(runner, tmp_path, model, "--data", str(tmp_path / "img")))
    assert [w for w in found if MEAN_STD_WARNING in w and "--mean 0.485,0.456,0.406" in w], found
    given = warnings_of(quantsim(runner, tmp_path, model, "--data", str(tmp_path / "img"),
                                 "--mean", "0.5", "--std", "0.25"))
    assert not [w for w in given if MEAN_STD_WARNING in w], given


def test_three_means_on_a_one_channel_model_names_the_channel(tmp_path, runner):
    pytest.importorskip("PIL")
    write_image(tmp_path / "img" / "a.png", solid(4, 4))
    r = quantsim(runner, tmp_path, conv_model_path(tmp_path, channels=1), "--data", str(tmp_path / "img"),
                 "--mean", "0.485,0.456,0.406")
    assert r.exit_code == 2, r.output
    assert "--mean has 3 values but the model's input has 1 channel: give one --mean value" in r.stderr
    assert "give 1 or 1" not in r.stderr
    r = quantsim(runner, tmp_path, conv_model_path(tmp_path), "--data", str(tmp_path / "img"), "--grayscale",
                 "--std", "0.2,0.2,0.2")
    assert "--std has 3 values but the images are read as grayscale (--grayscale): give one --std value" in r.stderr


# ---------------------------------------------------------------- sizes: squash warning, --center-crop


def test_images_out_of_proportion_warn_and_center_crop_keeps_them(tmp_path, runner):
    pytest.importorskip("PIL")
    root = tmp_path / "img"
    write_image(root / "a.png", solid(4, 4))
    write_image(root / "b.png", solid(4, 8))  # twice as wide as the model's 4x4
    model = conv_model_path(tmp_path)
    squashed = [w for w in warnings_of(quantsim(runner, tmp_path, model, "--data", str(root), "--mean", "0.5"))
                if SQUASH_WARNING in w]
    assert len(squashed) == 1 and "1 of 2 images" in squashed[0] and "b.png is 4x8" in squashed[0], squashed
    cropped = warnings_of(quantsim(runner, tmp_path, model, "--data", str(root), "--mean", "0.5",
                                   "--resize", "6", "--center-crop", "4"))
    assert not [w for w in cropped if SQUASH_WARNING in w], cropped
    # same proportions, other size: scaled, not squashed, no warning
    write_image(tmp_path / "big" / "c.png", solid(8, 8))
    scaled = warnings_of(quantsim(runner, tmp_path, model, "--data", str(tmp_path / "big"), "--mean", "0.5"))
    assert not [w for w in scaled if SQUASH_WARNING in w], scaled


def test_center_crop_takes_the_middle_with_aspect_kept(tmp_path):
    """A 4x8 image: white in columns 2..5, black elsewhere. Squashed to 4x4 it keeps some
    black; --center-crop 4 (scale 1, crop the middle) and --resize 8 --center-crop 4 (shorter
    side 4 -> 8, 8x16, the middle 4x4 comes from columns 3..4) are all white."""
    pytest.importorskip("PIL")
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, 2:6] = 255
    write_image(tmp_path / "img" / "a.png", arr)
    inp = [InputSpec("x", ("N", 3, 4, 4), np.dtype(np.float32))]

    def pixels(options):
        ds = open_data(str(tmp_path / "img"), inp, images=options)
        return next(iter(ds.batches(1)))["x"]

    squashed = pixels(ImageOptions())
    assert squashed.min() < 0.5
    np.testing.assert_allclose(pixels(image_options(center_crop="4")), 1.0)
    np.testing.assert_allclose(pixels(image_options(resize="8", center_crop="4")), 1.0)
    assert image_options(resize="256", center_crop="224") == ImageOptions(shorter_side=256, center_crop=(224, 224))
    assert image_options(resize="256x320", center_crop="224").resize == (256, 320)
    assert image_options(resize="256").resize == (256, 256)


def test_center_crop_option_errors(tmp_path, runner):
    pytest.importorskip("PIL")
    write_image(tmp_path / "img" / "a.png", solid(4, 4))
    model = conv_model_path(tmp_path)
    r = quantsim(runner, tmp_path, model, "--data", str(tmp_path / "img"), "--resize", "3", "--center-crop", "4")
    assert r.exit_code == 2 and "--resize 3 is smaller than --center-crop 4x4" in r.stderr, r.output
    r = quantsim(runner, tmp_path, model, "--data", str(tmp_path / "img"), "--center-crop", "0")
    assert r.exit_code == 2 and "--center-crop '0'" in r.stderr, r.output
    r = quantsim(runner, tmp_path, model, "--data", str(tmp_path / "img"), "--center-crop", "5")
    assert r.exit_code == 1 and "expects [N, 3, 4, 4] but the data has [1, 3, 5, 5]" in r.stderr, r.output


# ---------------------------------------------------------------- .npz names, random data


def test_npz_array_named_after_no_input_warns(tmp_path, runner):
    model = conv_model_path(tmp_path)
    data = tmp_path / "d.npz"
    np.savez(data, images=rand(3, 3, 4, 4))
    found = warnings_of(quantsim(runner, tmp_path, model, "--data", str(data)))
    assert [w for w in found if "no array named 'x'" in w and "'images'" in w and "input 'x'" in w], found
    np.savez(data, x=rand(3, 3, 4, 4))
    assert not [w for w in warnings_of(quantsim(runner, tmp_path, model, "--data", str(data))) if ".npz" in w]


def test_random_calibration_warns_and_random_evaluation_does_not(tmp_path, runner):
    model = conv_model_path(tmp_path)
    found = warnings_of(quantsim(runner, tmp_path, model, "--data", "random:4"))
    assert [w for w in found if RANDOM_WARNING in w and "real samples" in w], found
    sim = str(tmp_path / "sim.onnx")
    evaluated = warnings_of(runner.invoke(main, ["evaluate", model, sim, "--data", "random:4"]))
    assert not [w for w in evaluated if RANDOM_WARNING in w], evaluated


def test_warnings_show_with_quiet(tmp_path, runner):
    model = conv_model_path(tmp_path)
    r = runner.invoke(main, ["--quiet", "quantsim", model, "-o", str(tmp_path / "s.onnx"), "--data", "random:4"])
    assert r.exit_code == 0 and RANDOM_WARNING in r.stderr, r.output
