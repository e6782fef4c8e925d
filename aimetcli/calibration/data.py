"""Calibration and evaluation data: opening, validating and batching model feeds.

One ``--data`` option names where samples come from:

* ``path.npy``: one array ``[N, *sample_shape]`` for a single-input model;
* ``path.npz``: one array per input name, ``[N, ...]`` each with the same N, plus
  optional labels (``label``, ``labels`` or ``y``, or the key asked for);
* a directory of images (``.png .jpg .jpeg .bmp .webp``), either flat or one level
  of class subfolders whose sorted names give the label indices; images are decoded
  batch by batch with Pillow (an optional dependency);
* ``random:N``: N standard-normal samples for data-free runs.

Everything is checked once, when the data is opened, so that a mismatch is a
one-line error before any work starts: rank and fixed dimensions (dimension 0 is
the sample axis and is free), dtype kind (float data for float inputs, integer
data for integer inputs; widths are cast), equal sample counts, no NaN/Inf, no
value that would overflow the cast.

Arrays are memory-mapped when the file allows it (``.npy``, and members of an
uncompressed ``.npz`` as written by ``np.savez``), so that a batch costs only its
own samples. A model whose batch dimension is a fixed B gets exactly B samples per
feed, whatever batch size is asked for (onnxruntime rejects other sizes); a last
partial batch is then dropped, and ``Dataset.notes`` says so.

Random samples are drawn per sample from ``np.random.default_rng((seed, input
index, sample index))``: the same seed gives the same data whatever the batch size
or the sample cap.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from aimetcli.errors import AimetCliError, ErrorKind

if TYPE_CHECKING:
    import onnx_ir

__all__ = [
    "IMAGE_EXTENSIONS",
    "LABEL_KEYS",
    "Dataset",
    "ImageOptions",
    "InputSpec",
    "input_specs",
    "open_data",
    "parse_floats",
    "parse_resize",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Keys of an .npz taken as labels when no key is asked for, in this order of preference.
LABEL_KEYS = ("label", "labels", "y")
_ACCEPTED = (
    ".npy (one array [N, ...]), .npz (one array per input name), "
    f"a directory of images ({', '.join(IMAGE_EXTENSIONS)}) or random:N"
)
# Elements looked at at once when scanning data for NaN/Inf and ranges.
_SCAN_CHUNK = 1 << 22
_RANDOM_RE = re.compile(r"random:(.*)", re.IGNORECASE)


Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """A graph input to feed.

    ``shape`` holds an int for a fixed dimension and a name (str) or None for a
    dynamic one; ``shape`` itself is None when the model declares no shape at all
    (rank unknown: nothing but the dtype is checked).
    """

    name: str
    shape: tuple[Dim, ...] | None
    dtype: np.dtype

    @property
    def batch(self) -> int | None:
        """The fixed batch size (dimension 0), or None when it is dynamic."""
        if self.shape and isinstance(self.shape[0], int):
            return self.shape[0]
        return None


def input_specs(model: onnx_ir.Model) -> list[InputSpec]:
    """The graph inputs that need feeding (initializers listed as inputs are skipped)."""
    import onnx_ir as ir

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
            dims: list[Dim] = []
            for d in value.shape:
                if isinstance(d, ir.SymbolicDim):
                    dims.append(d.value)
                else:
                    dims.append(int(d))
            shape = tuple(dims)
        specs.append(InputSpec(value.name or "", shape, dtype))
    return specs


@dataclass(frozen=True)
class ImageOptions:
    """How images become model input.

    Pixels are scaled to [0, 1], then ``(x - mean) / std`` per channel (one value
    is used for every channel). ``resize`` is (height, width); None takes the
    model's fixed height and width. A model whose channel dimension is fixed to 1
    gets grayscale images even without ``grayscale``.
    """

    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    grayscale: bool = False


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


# ---------------------------------------------------------------- sources


class _Source(Protocol):
    """Samples of one input, read by range and returned in the input's dtype."""

    shape: tuple[int, ...]  # [N, *sample_shape] of the data

    def read(self, start: int, stop: int) -> np.ndarray: ...


class _ArraySource:
    """An array (often memory-mapped); a read copies only the samples asked for."""

    def __init__(self, array: np.ndarray, dtype: np.dtype):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[start:stop], dtype=self.dtype)


class _RandomSource:
    """Standard-normal samples, each from its own generator: independent of batching."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, seed: int, index: int):
        self.shape = shape
        self.dtype = dtype
        self.seed = seed
        self.index = index

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        for i in range(start, stop):
            rng = np.random.default_rng((self.seed, self.index, i))
            out[i - start] = rng.standard_normal(self.shape[1:], dtype=np.float32)
        return out


class _ImageSource:
    """Image files decoded, resized and normalized when their batch is read."""

    def __init__(self, files: list[Path], height: int, width: int, grayscale: bool, nhwc: bool,
                 mean: np.ndarray, std: np.ndarray, dtype: np.dtype, label: str):
        self.files = files
        self.height = height
        self.width = width
        self.grayscale = grayscale
        self.nhwc = nhwc
        self.mean = mean
        self.std = std
        self.dtype = dtype
        self.label = label
        c = 1 if grayscale else 3
        sample = (height, width, c) if nhwc else (c, height, width)
        self.shape = (len(files), *sample)

    def read(self, start: int, stop: int) -> np.ndarray:
        image_mod = _import_pil()
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        for i, path in enumerate(self.files[start:stop]):
            try:
                with image_mod.open(path) as im:
                    im = im.convert("L" if self.grayscale else "RGB")
                    if im.size != (self.width, self.height):
                        im = im.resize((self.width, self.height), image_mod.Resampling.BILINEAR)
                    pixels = np.asarray(im, dtype=np.float32)
            except (OSError, ValueError, SyntaxError) as exc:
                raise AimetCliError(
                    f"--data {self.label}: cannot decode image {path} ({exc}); remove or replace the file",
                    ErrorKind.DATA,
                ) from exc
            if pixels.ndim == 2:
                pixels = pixels[:, :, None]
            x = (pixels / np.float32(255.0) - self.mean) / self.std  # H, W, C
            out[i] = x if self.nhwc else np.transpose(x, (2, 0, 1))
        return out


def _import_pil():
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


# ---------------------------------------------------------------- the data set


def feed_rows(feeds: dict[str, np.ndarray]) -> int:
    """Samples in a feed: its inputs' leading dimension (1 for a model without inputs)."""
    return next(iter(feeds.values())).shape[0] if feeds else 1


class Dataset:
    """Validated samples for every model input, fed in batches.

    ``labels`` is a 1-D int64 array of ``num_samples`` entries when the data has
    labels. ``fixed_batch`` is the model's fixed batch size (every feed then holds
    exactly that many samples) or None. ``notes`` says what was assumed or dropped.
    """

    def __init__(self, spec: str, inputs: Sequence[InputSpec], sources: Sequence[_Source], num_samples: int,
                 labels: np.ndarray | None, fixed_batch: int | None, notes: list[str]):
        self.spec = spec
        self.inputs = list(inputs)
        self._sources = list(sources)
        self.num_samples = num_samples
        self.labels = labels
        self.fixed_batch = fixed_batch
        self.notes = notes

    @functools.cached_property
    def sample_nbytes(self) -> int:
        """Bytes of model input one sample takes (all inputs; at least 1)."""
        first = next(iter(self.batches(1)), {})
        return max(1, sum(a.nbytes for a in first.values()) // max(feed_rows(first), 1))

    def _step(self, batch_size: int) -> tuple[int, int]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise AimetCliError(f"--batch-size must be a positive integer, got {batch_size!r}", ErrorKind.USAGE)
        if self.fixed_batch is not None:
            step = self.fixed_batch
            return step, self.num_samples - self.num_samples % step
        return batch_size, self.num_samples

    def num_batches(self, batch_size: int) -> int:
        step, stop = self._step(batch_size)
        return -(-stop // step)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for onnxruntime, in order: {input name: contiguous array of the input's dtype}."""
        step, stop = self._step(batch_size)
        return self._iterate(step, stop)

    def _iterate(self, step: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, stop, step):
            end = min(start + step, stop)
            yield {spec.name: src.read(start, end) for spec, src in zip(self.inputs, self._sources)}

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.inputs)
        return f"Dataset({self.spec!r}, inputs=[{names}], num_samples={self.num_samples})"


# ---------------------------------------------------------------- validation helpers


def _data_error(spec: str, message: str) -> AimetCliError:
    return AimetCliError(f"--data {spec}: {message}", ErrorKind.DATA)


def _fmt_dim(d: Dim) -> str:
    return "?" if d is None else str(d)


def _fmt_expected(shape: tuple[Dim, ...]) -> str:
    if not shape:
        return "[]"
    return "[" + ", ".join(["N", *(_fmt_dim(d) for d in shape[1:])]) + "]"


def _fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _kind(dtype: np.dtype) -> str:
    if dtype.kind == "f" or dtype.name.startswith(("float", "bfloat")):
        return "float"
    if dtype.kind in "iu":
        return "integer"
    if dtype.kind == "b":
        return "bool"
    return "other"


def _check_shape(spec: str, inp: InputSpec, shape: tuple[int, ...], hint: str = "") -> None:
    if inp.shape is None:
        if not shape:
            raise _data_error(spec, f"input '{inp.name}' got a scalar; the data needs a sample axis [N, ...]")
        return
    if not inp.shape:
        raise _data_error(
            spec, f"input '{inp.name}' is a scalar (shape []), which cannot be fed in batches of samples"
        )
    ok = len(shape) == len(inp.shape) and all(
        not isinstance(want, int) or want == got for want, got in zip(inp.shape[1:], shape[1:])
    )
    if not ok:
        raise _data_error(
            spec, f"input '{inp.name}' expects {_fmt_expected(inp.shape)} but the data has {_fmt_shape(shape)}{hint}"
        )


def _check_dtype(spec: str, inp: InputSpec, data_dtype: np.dtype) -> None:
    want, got = _kind(inp.dtype), _kind(data_dtype)
    if got == "other" or want != got:
        raise _data_error(
            spec,
            f"input '{inp.name}' is {inp.dtype.name} but the data is {data_dtype.name}; "
            f"give {want} data for it",
        )


def _scan(spec: str, inp: InputSpec, array: np.ndarray) -> None:
    """NaN/Inf and overflow checks, chunk by chunk (memory-mapped data stays mapped)."""
    kind = _kind(array.dtype)
    if kind not in ("float", "integer") or array.size == 0:
        return
    per_sample = max(1, array.size // array.shape[0])
    rows = max(1, _SCAN_CHUNK // per_sample)
    nonfinite = 0
    bad_samples = 0
    lo: float | int | None = None
    hi: float | int | None = None
    for start in range(0, array.shape[0], rows):
        chunk = np.asarray(array[start:start + rows])
        if kind == "float":
            finite = np.isfinite(chunk)
            n_bad = chunk.size - int(np.count_nonzero(finite))
            if n_bad:
                nonfinite += n_bad
                bad_samples += int(np.count_nonzero(~finite.reshape(chunk.shape[0], -1).all(axis=1)))
                chunk = chunk[finite]
            if chunk.size:
                peak = float(np.max(np.abs(chunk)))
                hi = peak if hi is None else max(hi, peak)
        else:
            cmin, cmax = int(chunk.min()), int(chunk.max())
            lo = cmin if lo is None else min(lo, cmin)
            hi = cmax if hi is None else max(hi, cmax)
    if nonfinite:
        raise _data_error(
            spec,
            f"input '{inp.name}' has {nonfinite} NaN/Inf values (in {bad_samples} samples), which would "
            "poison calibration; clean or drop those samples",
        )
    if hi is None:
        return
    if kind == "float" and inp.dtype != array.dtype:
        try:
            limit = float(np.finfo(inp.dtype).max)
        except (TypeError, ValueError):
            return
        if hi > limit:
            raise _data_error(
                spec, f"input '{inp.name}' is {inp.dtype.name} but the data has values up to {hi:g}, "
                f"beyond its range (max {limit:g})",
            )
    elif kind == "integer" and inp.dtype != array.dtype:
        info = np.iinfo(inp.dtype)
        assert lo is not None
        if lo < info.min or hi > info.max:
            raise _data_error(
                spec, f"input '{inp.name}' is {inp.dtype.name} but the data holds values in [{lo}, {hi}], "
                f"beyond its range [{info.min}, {info.max}]",
            )


def _check_counts(spec: str, inputs: Sequence[InputSpec], shapes: Sequence[tuple[int, ...]]) -> int:
    for inp, shape in zip(inputs, shapes):
        if shape[0] == 0:
            raise _data_error(spec, f"input '{inp.name}' has no samples (the data has {_fmt_shape(shape)})")
    counts = {inp.name: shape[0] for inp, shape in zip(inputs, shapes)}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{k}' has {v}" for k, v in counts.items())
        raise _data_error(spec, f"inputs differ in their number of samples ({listed}); give the same N to all")
    return shapes[0][0]


def _fixed_batch(spec: str, inputs: Sequence[InputSpec], n: int, notes: list[str]) -> int | None:
    fixed = {inp.name: inp.batch for inp in inputs if inp.batch is not None}
    if not fixed:
        return None
    values = set(fixed.values())
    if len(values) > 1:
        listed = ", ".join(f"'{k}' {v}" for k, v in fixed.items())
        raise _data_error(spec, f"the model's inputs fix different batch sizes ({listed}); cannot feed them together")
    batch = values.pop()
    if batch <= 0:
        raise _data_error(spec, f"the model fixes the batch size to {batch}; re-export it with a valid batch dim")
    if n < batch:
        raise _data_error(
            spec, f"the model has a fixed batch of {batch} but the data has only {n} samples; give at least {batch}"
        )
    if n % batch:
        notes.append(
            f"the model has a fixed batch of {batch}: the last {n % batch} of {n} samples are not used"
        )
    return batch


def _labels_array(spec: str, key: str, raw: np.ndarray, n_total: int) -> np.ndarray:
    labels = np.asarray(raw)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise _data_error(
            spec, f"labels '{key}' has shape {_fmt_shape(labels.shape)}; expected one class index per sample [N]"
        )
    if labels.shape[0] != n_total:
        raise _data_error(spec, f"labels '{key}' has {labels.shape[0]} entries but the data has {n_total} samples")
    kind = _kind(labels.dtype)
    if kind == "float":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise _data_error(spec, f"labels '{key}' holds non-integer values; expected class indices")
    elif kind != "integer":
        raise _data_error(spec, f"labels '{key}' is {labels.dtype.name}; expected integer class indices")
    return labels.astype(np.int64)


# ---------------------------------------------------------------- file readers


def _npy_header(fp) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    return None


def _mmap_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map an uncompressed .npy member of a zip file, or None when it cannot be."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    with open(path, "rb") as fp:
        fp.seek(info.header_offset)
        local = fp.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fp.seek(info.header_offset + 30 + name_len + extra_len)
        header = _npy_header(fp)
        if header is None:
            return None
        shape, fortran, dtype = header
        offset = fp.tell()
    if dtype.hasobject or math.prod(shape) == 0:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class _NpzReader:
    """Members of an .npz by key (name without '.npy'), memory-mapped where stored uncompressed."""

    def __init__(self, path: Path, spec: str):
        self.path = path
        self.spec = spec
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise _data_error(spec, f"not a valid .npz file ({exc}); save it with numpy.savez") from exc
        self.infos = {
            info.filename[: -len(".npy")]: info for info in self.zip.infolist() if info.filename.endswith(".npy")
        }
        self._cache: dict[str, np.ndarray] = {}

    @property
    def keys(self) -> list[str]:
        return list(self.infos)

    def get(self, key: str) -> np.ndarray:
        if key in self._cache:
            return self._cache[key]
        info = self.infos[key]
        try:
            array = _mmap_member(self.path, info)
            if array is None:
                with self.zip.open(info) as fp:
                    array = np.lib.format.read_array(fp, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, struct.error) as exc:
            raise _data_error(self.spec, f"array '{key}' cannot be read ({exc}); save the file again") from exc
        self._cache[key] = array
        return array

    def close(self) -> None:
        self.zip.close()


def _load_npy(path: Path, spec: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _data_error(spec, f"not a valid .npy file ({exc}); save it with numpy.save") from exc


# ---------------------------------------------------------------- opening


def open_data(spec: str | os.PathLike[str], inputs: list[InputSpec], *, num_samples: int | None = None,
              labels_key: str | None = None, images: ImageOptions | None = None, seed: int = 0) -> Dataset:
    """Open ``spec`` (see the module docstring), check it against ``inputs`` and return the data set."""
    spec = os.fspath(spec)
    if num_samples is not None and (isinstance(num_samples, bool) or num_samples <= 0):
        raise AimetCliError(f"--num-samples must be a positive integer, got {num_samples}", ErrorKind.USAGE)
    if not inputs:
        raise _data_error(spec, "the model has no inputs to feed")
    match = _RANDOM_RE.fullmatch(spec)
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


def _single_input(spec: str, inputs: Sequence[InputSpec], what: str) -> InputSpec:
    if len(inputs) != 1:
        names = ", ".join(f"'{i.name}'" for i in inputs)
        raise _data_error(
            spec, f"{what} feeds one input but the model has {len(inputs)} ({names}); "
            "give an .npz with one array per input name",
        )
    return inputs[0]


def _finish_arrays(spec: str, inputs: Sequence[InputSpec], arrays: Sequence[np.ndarray], num_samples: int | None,
                   labels: tuple[str, np.ndarray] | None, notes: list[str]) -> Dataset:
    for inp, array in zip(inputs, arrays):
        _check_shape(spec, inp, tuple(array.shape))
    n_total = _check_counts(spec, inputs, [tuple(a.shape) for a in arrays])
    n = n_total if num_samples is None else min(num_samples, n_total)
    arrays = [a[:n] for a in arrays]
    for inp, array in zip(inputs, arrays):
        _check_dtype(spec, inp, array.dtype)
        _scan(spec, inp, array)
    label_array = None
    if labels is not None:
        label_array = _labels_array(spec, labels[0], labels[1], n_total)[:n]
    batch = _fixed_batch(spec, inputs, n, notes)
    sources = [_ArraySource(a, inp.dtype) for inp, a in zip(inputs, arrays)]
    return Dataset(spec, inputs, sources, n, label_array, batch, notes)


def _open_npy(spec: str, path: Path, inputs: Sequence[InputSpec], num_samples: int | None) -> Dataset:
    inp = _single_input(spec, inputs, "a .npy file")
    array = _load_npy(path, spec)
    if array.ndim == 0:
        raise _data_error(
            spec, f"input '{inp.name}' expects {_fmt_expected(inp.shape or ())} but the data is a scalar"
        )
    return _finish_arrays(spec, [inp], [array], num_samples, None, [])


def _open_npz(spec: str, path: Path, inputs: Sequence[InputSpec], num_samples: int | None,
              labels_key: str | None) -> Dataset:
    reader = _NpzReader(path, spec)
    try:
        keys = reader.keys
        if not keys:
            raise _data_error(spec, "the .npz holds no arrays; save one array per input name with numpy.savez")
        listed = ", ".join(f"'{k}'" for k in keys)
        input_names = {inp.name for inp in inputs}
        if labels_key is not None:
            if labels_key not in reader.infos:
                raise _data_error(spec, f"no labels array '{labels_key}'; the file holds {listed}")
            label_key: str | None = labels_key
        else:
            label_key = next((k for k in LABEL_KEYS if k in reader.infos and k not in input_names), None)
        notes: list[str] = []
        chosen: list[str] = []
        missing = [inp.name for inp in inputs if inp.name not in reader.infos]
        if missing:
            candidates = [k for k in keys if k != label_key and k not in input_names]
            if len(inputs) == 1 and len(candidates) == 1:
                chosen = candidates
                notes.append(f"the .npz has no array named '{inputs[0].name}': using its only array '{chosen[0]}'")
            else:
                names = ", ".join(f"'{m}'" for m in missing)
                raise _data_error(
                    spec, f"no array for input {names}; the file holds {listed}; name each array after its input",
                )
        else:
            chosen = [inp.name for inp in inputs]
        arrays = [reader.get(k) for k in chosen]
        for key, array in zip(chosen, arrays):
            if array.ndim == 0:
                inp = inputs[chosen.index(key)]
                raise _data_error(
                    spec, f"input '{inp.name}' expects {_fmt_expected(inp.shape or ())} but the data is a scalar"
                )
        labels = (label_key, reader.get(label_key)) if label_key is not None else None
        return _finish_arrays(spec, inputs, arrays, num_samples, labels, notes)
    finally:
        reader.close()


def _open_random(spec: str, count_text: str, inputs: Sequence[InputSpec], num_samples: int | None,
                 seed: int) -> Dataset:
    try:
        n = int(count_text)
    except ValueError:
        n = 0
    if n <= 0:
        raise AimetCliError(
            f"--data {spec}: expected random:N with N a positive number of samples, e.g. random:64", ErrorKind.USAGE
        )
    if num_samples is not None:
        n = min(n, num_samples)
    sources: list[_Source] = []
    for index, inp in enumerate(inputs):
        if _kind(inp.dtype) != "float":
            raise _data_error(
                spec, f"input '{inp.name}' is {inp.dtype.name}; random data only feeds float inputs: "
                "give a data file (.npy or .npz)",
            )
        if inp.shape is None:
            raise _data_error(
                spec, f"input '{inp.name}' has no declared shape; random data needs fixed dims: "
                "give a data file (.npy or .npz)",
            )
        if not inp.shape:
            raise _data_error(spec, f"input '{inp.name}' is a scalar (shape []), which cannot be fed in batches")
        for axis, d in enumerate(inp.shape[1:], start=1):
            if not isinstance(d, int):
                raise _data_error(
                    spec, f"input '{inp.name}' {_fmt_expected(inp.shape)} has dynamic dim {axis} ({_fmt_dim(d)}); "
                    "random data needs every dim but the batch fixed: give a data file (.npy or .npz)",
                )
        sources.append(_RandomSource((n, *(int(d) for d in inp.shape[1:])), inp.dtype, seed, index))
    notes: list[str] = []
    batch = _fixed_batch(spec, inputs, n, notes)
    return Dataset(spec, inputs, sources, n, None, batch, notes)


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
    channels = 1 if grayscale else 3

    if options.resize is not None:
        height, width = options.resize
        if height <= 0 or width <= 0:
            raise AimetCliError(f"--resize {height}x{width}: sizes must be positive", ErrorKind.USAGE)
    elif model_h is not None and model_w is not None:
        height, width = model_h, model_w
    else:
        shown = _fmt_expected(inp.shape) if inp.shape is not None else "an unknown shape"
        raise AimetCliError(
            f"--data {spec}: input '{inp.name}' has {shown} without a fixed height and width; "
            "give --resize HxW",
            ErrorKind.USAGE,
        )

    def per_channel(values: tuple[float, ...], option: str) -> np.ndarray:
        if len(values) not in (1, channels):
            raise AimetCliError(
                f"{option} has {len(values)} values but the images have {channels} channel"
                f"{'s' if channels > 1 else ''}; give 1 or {channels}",
                ErrorKind.USAGE,
            )
        return np.broadcast_to(np.asarray(values, dtype=np.float32), (channels,)).copy()

    mean = per_channel(tuple(options.mean), "--mean")
    std = per_channel(tuple(options.std), "--std")
    if np.any(std == 0) or not np.all(np.isfinite(std)) or not np.all(np.isfinite(mean)):
        raise AimetCliError("--std must be finite and non-zero (and --mean finite)", ErrorKind.USAGE)

    files, class_ids, classes = _image_files(spec, root)
    n_total = len(files)
    n = n_total if num_samples is None else min(num_samples, n_total)
    files = files[:n]
    source = _ImageSource(files, height, width, grayscale, nhwc, mean, std, inp.dtype, spec)
    other = "NCHW" if nhwc else "NHWC"
    hint = ""
    if rank4 and model_c not in (1, 3) and _channel_dim(inp.shape, other) in (1, 3):
        hint = f"; the model looks {other}: give --layout {other}"
    _check_shape(spec, inp, source.shape, hint)
    labels = None
    if class_ids is not None:
        labels = np.asarray(class_ids[:n], dtype=np.int64)
        notes.append(f"labels from {len(classes)} class subfolders ({classes[0]} = 0 ... {classes[-1]} = "
                     f"{len(classes) - 1})")
    batch = _fixed_batch(spec, [inp], n, notes)
    return Dataset(spec, [inp], [source], n, labels, batch, notes)


def _channel_dim(shape: tuple[Dim, ...] | None, layout: str) -> Dim:
    if shape is None or len(shape) != 4:
        return None
    return shape[3] if layout == "NHWC" else shape[1]
