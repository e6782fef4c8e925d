"""Calibration and evaluation data: opening, validating and batching model feeds.

One ``--data`` option names where samples come from:

* ``path.npy``: one array ``[N, *sample_shape]`` for a single-input model;
* ``path.npz``: one array per input name, ``[N, ...]`` each with the same N, plus
  optional labels (``label``, ``labels`` or ``y``, or the key asked for); a single
  array under another name feeds a single-input model, with a warning;
* a directory of images (``.png .jpg .jpeg .bmp .webp``), either flat or one level
  of class subfolders whose sorted names give the label indices; images are decoded
  batch by batch with Pillow (an optional dependency), resized to the model's size
  (``--resize``), or scaled with their aspect ratio kept and center-cropped
  (``--resize 256 --center-crop 224``), then normalised as ``(pixel/255 - mean) /
  std``. Without ``--mean``/``--std``, and when images are squashed out of
  proportion, a warning says what was assumed;
* ``random:N``: N standard-normal samples for data-free runs (a warning says that
  their calibration ranges are poor).

Inputs whose axis 0 is not the sample axis (``checks.Feeding``): an array with one
more dim than the input, ``[N, *shape]``, holds one whole input tensor per sample
(a recurrent state ``[layers, 1, H]`` as ``[N, layers, 1, H]``); the model then runs
once per sample. A scalar input (shape ``[]``, e.g. a sample rate) takes an array
``[N]``, one value per sample, or a 0-d array fed to every run
(``np.savez(path, audio=x, sr=np.int64(16000))``). A declared size <= 0 (legacy
converters write -1 or 0 for an unknown size) is dynamic.

Everything is checked once, when the data is opened, so that a mismatch is a
one-line error before any work starts: rank and fixed dimensions (dimension 0 is
the sample axis and is free), dtype kind (float data for float inputs, integer
data for integer inputs; widths are cast), equal sample counts, no NaN/Inf, no
value that would overflow the cast. ``Dataset.warnings`` say what was assumed;
``Dataset.notes`` are details.

Arrays are memory-mapped when the file allows it (``.npy``, and members of an
uncompressed ``.npz`` as written by ``np.savez``), so that a batch costs only its
own samples. A model whose batch dimension is a fixed B gets exactly B samples per
feed, whatever batch size is asked for (onnxruntime rejects other sizes); a last
partial batch is then dropped, and ``Dataset.notes`` says so.

Random samples are drawn per sample from ``np.random.default_rng((seed, input
index, sample index))``: the same seed gives the same data whatever the batch size
or the sample cap.

This module is the public API: ``open_data`` (the dispatcher), ``input_specs``, the
option parsers (``image_options`` builds ``ImageOptions`` from the option texts) and
the names re-exported below. The shared types (``InputSpec``,
``ImageOptions``, ``Dataset``) are in ``dataset``, the checks and error wording in
``checks``, each source kind's sources and opener in ``arrays`` (.npy, .npz), ``images`` and
``random_data``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from aimetcli import graph as g
from aimetcli.calibration.checks import Feeding, _data_error
from aimetcli.calibration.dataset import Dataset, Dim, Feed, ImageOptions, InputSpec, feed_rows
from aimetcli.calibration.arrays import LABEL_KEYS, _open_npy, _open_npz
from aimetcli.calibration.images import IMAGE_EXTENSIONS, _open_images
from aimetcli.calibration.random_data import _open_random
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.paths import RANDOM_DATA

if TYPE_CHECKING:
    import onnx_ir

__all__ = [
    "IMAGE_EXTENSIONS",
    "LABEL_KEYS",
    "DataSource",
    "Dataset",
    "Feed",
    "Feeding",
    "ImageOptions",
    "InputSpec",
    "as_dataset",
    "feed_rows",
    "image_options",
    "input_specs",
    "open_data",
    "parse_floats",
    "parse_resize",
]

# What a step accepts as its data: an open Dataset, or a spec open_data reads (path or random:N).
DataSource = Union[Dataset, str, "os.PathLike[str]"]

_ACCEPTED = (
    ".npy (one array [N, ...]), .npz (one array per input name), "
    f"a directory of images ({', '.join(IMAGE_EXTENSIONS)}) or random:N"
)


def input_specs(model: onnx_ir.Model) -> list[InputSpec]:
    """The graph inputs that need feeding (initializers listed as inputs are skipped); a
    declared size <= 0 is dynamic (``graph.fixed_dim``)."""
    specs: list[InputSpec] = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        if value.dtype is None:
            raise AimetCliError(
                f"model input '{value.name}' declares no tensor element type; "
                "re-export the model with typed inputs",
                ErrorKind.UNSUPPORTED,
            )
        try:
            dtype = np.dtype(value.dtype.numpy())
        except (TypeError, ValueError, NotImplementedError) as exc:
            raise AimetCliError(
                f"model input '{value.name}' has element type {value.dtype.name}, which cannot be fed from numpy",
                ErrorKind.UNSUPPORTED,
            ) from exc
        shape: tuple[Dim, ...] | None = None
        if value.shape is not None:
            shape = tuple(g.fixed_dim(d) or getattr(d, "value", None) for d in value.shape)
        specs.append(InputSpec(value.name or "", shape, dtype))
    return specs


# ---------------------------------------------------------------- option parsing


def parse_resize(text: str | None, option: str = "--resize") -> tuple[int, int] | None:
    """'224' -> (224, 224); '224x256' (or 'HxW' with ',' or 'X') -> (224, 256); None -> None."""
    if text is None:
        return None
    parts = [p.strip() for p in re.split(r"[xX,]", str(text).strip())]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v <= 0 for v in values):
        raise AimetCliError(
            f"{option} {text!r}: expected a size S or HxW of positive integers, e.g. 224 or 224x224",
            ErrorKind.USAGE,
        )
    return (values[0], values[-1])


def parse_floats(text: str | None, option: str = "--mean") -> tuple[float, ...] | None:
    """'0.485,0.456,0.406' -> (0.485, 0.456, 0.406); '0.5' -> (0.5,); None -> None."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise AimetCliError(
            f"{option} {text!r}: expected finite numbers separated by commas, e.g. 0.485,0.456,0.406",
            ErrorKind.USAGE,
        )
    return values


def image_options(*, resize: str | None = None, center_crop: str | None = None, mean: str | None = None,
                  std: str | None = None, layout: str = "NCHW", grayscale: bool = False) -> ImageOptions:
    """``ImageOptions`` from the option texts: ``--resize S`` with ``--center-crop`` is the
    shorter side (aspect ratio kept), without it SxS; ``--resize HxW`` is always HxW."""
    crop = parse_resize(center_crop, "--center-crop")
    size = parse_resize(resize)
    single = resize is not None and len(re.split(r"[xX,]", str(resize).strip())) == 1
    shorter = size[0] if crop is not None and single and size is not None else None
    return ImageOptions(resize=None if shorter is not None else size, shorter_side=shorter, center_crop=crop,
                        mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), layout=layout,
                        grayscale=grayscale)


# ---------------------------------------------------------------- opening


def open_data(spec: str | os.PathLike[str], inputs: list[InputSpec], *, num_samples: int | None = None,
              labels_key: str | None = None, images: ImageOptions | None = None, seed: int = 0) -> Dataset:
    """Open ``spec`` (see the module docstring), check it against ``inputs`` and return the data set."""
    spec = os.fspath(spec)
    if num_samples is not None and (isinstance(num_samples, bool) or num_samples <= 0):
        raise AimetCliError(f"--num-samples must be a positive integer, got {num_samples}", ErrorKind.USAGE)
    if not inputs:
        raise _data_error(spec, "the model has no inputs to feed")
    match = RANDOM_DATA.fullmatch(spec)
    if match:
        if labels_key is not None:
            raise AimetCliError("--labels applies to .npz data only, not to random data", ErrorKind.USAGE)
        return _open_random(spec, match.group(1), inputs, num_samples, seed)
    path = Path(spec)
    if not path.exists():
        raise _data_error(spec, "no such file or directory")
    if path.is_dir():
        if labels_key is not None:
            raise AimetCliError(
                "--labels applies to .npz data only; an image directory takes its labels from class subfolders",
                ErrorKind.USAGE,
            )
        return _open_images(spec, path, inputs, num_samples, images or ImageOptions())
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if labels_key is not None:
            raise AimetCliError("--labels applies to .npz data only; a .npy file holds one array",
                                ErrorKind.USAGE)
        return _open_npy(spec, path, inputs, num_samples)
    if suffix == ".npz":
        return _open_npz(spec, path, inputs, num_samples, labels_key)
    raise _data_error(spec, f"unknown data format '{suffix or path.name}'; accepted: {_ACCEPTED}")


def as_dataset(data: DataSource, model: onnx_ir.Model) -> Dataset:
    """The data a step runs on: a Dataset as it is; a spec (see the module docstring) opened for
    ``model``'s inputs with :func:`open_data`'s defaults."""
    if isinstance(data, (str, os.PathLike)):
        return open_data(data, input_specs(model))
    return data
