"""Calibration samples from a directory of images (flat, or one subfolder per class, which
gives labels): ``_ImageGeometry`` places each image in the model's height x width,
``_ImageSource`` decodes with Pillow and normalizes when a batch is read, and
``_open_images`` (what ``data.open_data`` dispatches to) checks the options against the
model's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aimetcli.calibration.checks import (
    _check_shape,
    _data_error,
    _fixed_batch,
    _fmt_expected,
    _kind,
    _single_input,
)
from aimetcli.calibration.dataset import Dataset, Dim, ImageOptions, InputSpec
from aimetcli.errors import AimetCliError, ErrorKind

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class _ImageGeometry:
    """Where an image of any size lands in the model's ``height`` x ``width``.

    Without ``crop`` the image is resized to height x width outright (its aspect ratio is
    not kept). With ``crop`` it is first scaled: its shorter side to ``shorter_side`` (the
    longer one in proportion, rounded down as torchvision's Resize does), or to ``resize``
    (H, W) outright, or, when neither is given, by the smallest factor that covers the
    crop; then the centered height x width window is taken.
    """

    height: int
    width: int
    crop: bool = False
    shorter_side: int | None = None
    resize: tuple[int, int] | None = None

    def scaled(self, w0: int, h0: int) -> tuple[int, int]:
        """(width, height) of an image of ``w0`` x ``h0`` pixels before any crop."""
        if not self.crop:
            return self.width, self.height
        if self.shorter_side is not None:
            s = self.shorter_side
            return (s, int(s * h0 / w0)) if w0 <= h0 else (int(s * w0 / h0), s)
        if self.resize is not None:
            return self.resize[1], self.resize[0]
        scale = max(self.height / h0, self.width / w0)
        return max(self.width, round(w0 * scale)), max(self.height, round(h0 * scale))

    def squashes(self, w0: int, h0: int) -> bool:
        """Whether scaling changes the image's aspect ratio (by more than 1%)."""
        w, h = self.scaled(w0, h0)
        return abs(w * h0 - h * w0) > 0.01 * w * h0

    def apply(self, im, image_mod):
        w, h = self.scaled(*im.size)
        if (w, h) != im.size:
            im = im.resize((w, h), image_mod.Resampling.BILINEAR)
        if (w, h) != (self.width, self.height):
            left, top = int(round((w - self.width) / 2.0)), int(round((h - self.height) / 2.0))
            im = im.crop((left, top, left + self.width, top + self.height))
        return im


def _decode_error(label: str, path: Path, exc: Exception) -> AimetCliError:
    return AimetCliError(f"--data {label}: cannot decode image {path} ({exc}); remove or replace the file",
                         ErrorKind.DATA)


class _ImageSource:
    """Image files decoded, placed (``_ImageGeometry``) and normalized when their batch is read."""

    def __init__(self, files: list[Path], geometry: _ImageGeometry, grayscale: bool, nhwc: bool,
                 mean: np.ndarray, std: np.ndarray, dtype: np.dtype, label: str):
        self.files = files
        self.geometry = geometry
        self.grayscale = grayscale
        self.nhwc = nhwc
        self.mean = mean
        self.std = std
        self.dtype = dtype
        self.label = label
        c = 1 if grayscale else 3
        height, width = geometry.height, geometry.width
        sample = (height, width, c) if nhwc else (c, height, width)
        self.shape = (len(files), *sample)

    def read(self, start: int, stop: int) -> np.ndarray:
        image_mod = _import_pil()
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        for i, path in enumerate(self.files[start:stop]):
            try:
                with image_mod.open(path) as im:
                    im = self.geometry.apply(im.convert("L" if self.grayscale else "RGB"), image_mod)
                    pixels = np.asarray(im, dtype=np.float32)
            except (OSError, ValueError, SyntaxError) as exc:
                raise _decode_error(self.label, path, exc) from exc
            if pixels.ndim == 2:
                pixels = pixels[:, :, None]
            x = (pixels / np.float32(255.0) - self.mean) / self.std  # H, W, C
            out[i] = x if self.nhwc else np.transpose(x, (2, 0, 1))
        return out

    def squashed(self) -> tuple[int, Path, tuple[int, int]] | None:
        """(how many, the first one, its width x height) of the images whose aspect ratio the
        geometry changes, or None; reads only the files' headers."""
        image_mod = _import_pil()
        count, first = 0, None
        for path in self.files:
            try:
                with image_mod.open(path) as im:
                    size = im.size
            except (OSError, ValueError, SyntaxError) as exc:
                raise _decode_error(self.label, path, exc) from exc
            if self.geometry.squashes(*size):
                count += 1
                first = first or (path, size)
        return (count, *first) if first else None


def _import_pil():
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def _image_files(spec: str, root: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """Files in evaluation order, their class indices (None when flat) and the class names."""

    def images_in(folder: Path) -> list[Path]:
        return sorted(
            p for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )

    top = images_in(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [images_in(root / c) for c in classes]
    if not any(per_class):
        if not top:
            raise _data_error(spec, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the directory or its subfolders")
        return top, None, []
    if top:
        raise _data_error(
            spec, f"holds {len(top)} images beside class subfolders; put every image in a class subfolder, or none",
        )
    # Round-robin over classes so that the first samples (a --num-samples cap) span every class.
    files: list[Path] = []
    labels: list[int] = []
    for rank in range(max(len(f) for f in per_class)):
        for index, class_files in enumerate(per_class):
            if rank < len(class_files):
                files.append(class_files[rank])
                labels.append(index)
    return files, labels, classes


def _open_images(spec: str, root: Path, inputs: Sequence[InputSpec], num_samples: int | None,
                 options: ImageOptions) -> Dataset:
    inp = _single_input(spec, inputs, "a directory of images")
    image_mod = _import_pil()
    if image_mod is None:
        raise _data_error(spec, "reading images needs Pillow: pip install 'aimetcli[images]'")
    layout = str(options.layout).upper()
    if layout not in ("NCHW", "NHWC"):
        raise AimetCliError(f"--layout {options.layout!r}: expected NCHW or NHWC", ErrorKind.USAGE)
    nhwc = layout == "NHWC"
    if _kind(inp.dtype) != "float":
        raise _data_error(
            spec, f"input '{inp.name}' is {inp.dtype.name}; images are fed as float pixels: "
            "give a .npy or .npz with the input's own dtype",
        )
    rank4 = inp.shape is not None and len(inp.shape) == 4
    model_c = model_h = model_w = None
    if rank4:
        assert inp.shape is not None
        c_dim, h_dim, w_dim = (inp.shape[3], inp.shape[1], inp.shape[2]) if nhwc else inp.shape[1:4]
        model_c = c_dim if isinstance(c_dim, int) else None
        model_h = h_dim if isinstance(h_dim, int) else None
        model_w = w_dim if isinstance(w_dim, int) else None
    notes: list[str] = []
    grayscale = options.grayscale
    if not grayscale and model_c == 1:
        grayscale = True
        notes.append(f"input '{inp.name}' has 1 channel: images are converted to grayscale")
    one_channel = ("the images are read as grayscale (--grayscale)" if options.grayscale
                   else "the model's input has 1 channel") if grayscale else None
    geometry = _image_geometry(spec, inp, options, model_h, model_w)
    mean, std, warnings = _normalisation(options, one_channel)

    files, class_ids, classes = _image_files(spec, root)
    n_total = len(files)
    n = n_total if num_samples is None else min(num_samples, n_total)
    files = files[:n]
    source = _ImageSource(files, geometry, grayscale, nhwc, mean, std, inp.dtype, spec)
    other = "NCHW" if nhwc else "NHWC"
    hint = ""
    if rank4 and model_c not in (1, 3) and _channel_dim(inp.shape, other) in (1, 3):
        hint = f"; the model looks {other}: give --layout {other}"
    _check_shape(spec, inp, source.shape, hint)
    if squashed := source.squashed():
        count, path, (w0, h0) = squashed
        target = geometry.resize or (geometry.height, geometry.width)
        warnings.append(
            f"{count} of {n} images are not in the {target[0]}x{target[1]} (HxW) proportions they are resized to "
            f"(e.g. {path.name} is {h0}x{w0}) and are squashed: give --center-crop to keep their aspect ratio "
            "(ImageNet: --resize 256 --center-crop 224)"
        )
    labels = None
    if class_ids is not None:
        labels = np.asarray(class_ids[:n], dtype=np.int64)
        notes.append(f"labels from {len(classes)} class subfolders ({classes[0]} = 0 ... {classes[-1]} = "
                     f"{len(classes) - 1})")
    batch = _fixed_batch(spec, [inp], n, notes)
    return Dataset(spec, [inp], [source], n, labels, batch, notes, warnings=warnings)


def _image_geometry(spec: str, inp: InputSpec, options: ImageOptions, model_h: int | None,
                    model_w: int | None) -> _ImageGeometry:
    """The image size the model is fed and how images are brought to it (``ImageOptions``)."""
    sizes = {"--resize": (*(options.resize or ()), options.shorter_side), "--center-crop": options.center_crop or ()}
    for option, values in sizes.items():
        if any(v is not None and v <= 0 for v in values):
            raise AimetCliError(f"{option}: sizes must be positive", ErrorKind.USAGE)
    if options.center_crop is not None:
        height, width = options.center_crop
        crop = f"--center-crop {height}x{width}"
        if options.shorter_side is not None and options.shorter_side < max(height, width):
            raise AimetCliError(f"--resize {options.shorter_side} is smaller than {crop}: the shorter side must "
                                "be at least the crop (e.g. --resize 256 --center-crop 224)", ErrorKind.USAGE)
        if options.resize is not None and (options.resize[0] < height or options.resize[1] < width):
            raise AimetCliError(f"--resize {options.resize[0]}x{options.resize[1]} is smaller than {crop}",
                                ErrorKind.USAGE)
        return _ImageGeometry(height, width, crop=True, shorter_side=options.shorter_side, resize=options.resize)
    if options.shorter_side is not None:
        return _ImageGeometry(options.shorter_side, options.shorter_side)
    if options.resize is not None:
        return _ImageGeometry(*options.resize)
    if model_h is not None and model_w is not None:
        return _ImageGeometry(model_h, model_w)
    shown = _fmt_expected(inp.shape) if inp.shape is not None else "an unknown shape"
    raise AimetCliError(
        f"--data {spec}: input '{inp.name}' has {shown} without a fixed height and width; "
        "give --resize HxW (or --resize S --center-crop HxW)",
        ErrorKind.USAGE,
    )


def _normalisation(options: ImageOptions, one_channel: str | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-channel mean and std, and a warning when neither was given. ``one_channel``: why the
    images have one channel (None: they have 3)."""
    channels = 1 if one_channel else 3

    def per_channel(values: tuple[float, ...], option: str) -> np.ndarray:
        if len(values) not in (1, channels):
            why = (f"{one_channel}: give one {option} value" if one_channel
                   else f"the images have 3 channels: give 1 or 3 {option} values")
            raise AimetCliError(f"{option} has {len(values)} values but {why}", ErrorKind.USAGE)
        return np.broadcast_to(np.asarray(values, dtype=np.float32), (channels,)).copy()

    warnings = []
    if options.mean is None and options.std is None:
        warnings.append("images are fed as pixel/255 in [0, 1], not normalised: if the model was trained on "
                        "normalised input, give --mean and --std (ImageNet: --mean 0.485,0.456,0.406 "
                        "--std 0.229,0.224,0.225)")
    mean = per_channel(tuple(options.mean if options.mean is not None else (0.0,)), "--mean")
    std = per_channel(tuple(options.std if options.std is not None else (1.0,)), "--std")
    if np.any(std == 0) or not np.all(np.isfinite(std)) or not np.all(np.isfinite(mean)):
        raise AimetCliError("--std must be finite and non-zero (and --mean finite)", ErrorKind.USAGE)
    return mean, std, warnings


def _channel_dim(shape: tuple[Dim, ...] | None, layout: str) -> Dim:
    if shape is None or len(shape) != 4:
        return None
    return shape[3] if layout == "NHWC" else shape[1]
