"""Where calibration samples come from: the sources a ``Dataset`` reads batches from
(``_ArraySource`` over a possibly memory-mapped array, ``_PerSampleSource`` and
``_ConstantSource`` for inputs whose axis 0 is not the sample axis, ``_RandomSource``,
``_ImageSource`` decoding with Pillow and ``_ImageGeometry`` placing each image), the
file readers (``.npy`` loading, ``.npz`` members memory-mapped where stored uncompressed;
object arrays named as pickled) and the per-format openers ``_open_npy``, ``_open_npz``,
``_open_random`` and ``_open_images`` that ``data.open_data`` dispatches to; each checks
its data with ``checks`` and returns a ``Dataset`` (with warnings for what it assumed).
"""

from __future__ import annotations

import math
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aimetcli.calibration.checks import (
    Feeding,
    _check_counts,
    _check_dtype,
    _check_shape,
    _data_error,
    _feeding,
    _fixed_batch,
    _fmt_dim,
    _fmt_expected,
    _kind,
    _labels_array,
    _one_per_sample,
    _scan,
)
from aimetcli.calibration.dataset import Dataset, Dim, ImageOptions, InputSpec, _Source
from aimetcli.errors import AimetCliError, ErrorKind

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Keys of an .npz taken as labels when no key is asked for, in this order of preference.
LABEL_KEYS = ("label", "labels", "y")


# ---------------------------------------------------------------- sources


class _ArraySource:
    """An array (often memory-mapped); a read copies only the samples asked for."""

    def __init__(self, array: np.ndarray, dtype: np.dtype):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[start:stop], dtype=self.dtype)


class _PerSampleSource:
    """One whole input tensor per sample (data ``[N, *shape]``): a run reads exactly one,
    without the sample axis (``Dataset.fixed_batch`` is then 1)."""

    def __init__(self, array: np.ndarray, dtype: np.dtype):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        assert stop == start + 1, "an input fed per sample is read one sample at a time"
        return np.array(self.array[start], dtype=self.dtype, order="C")  # 0-d for a scalar input


class _ConstantSource:
    """A 0-d array fed to every run (a scalar input such as a sample rate)."""

    def __init__(self, array: np.ndarray, dtype: np.dtype):
        self.value = np.asarray(array, dtype=dtype)
        self.shape = ()

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.value


_SOURCES = {Feeding.BATCHED: _ArraySource, Feeding.PER_SAMPLE: _PerSampleSource, Feeding.CONSTANT: _ConstantSource}


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


# ---------------------------------------------------------------- file readers


def _npy_header(fp) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    return None


def _holds_objects(fp) -> bool:
    """Whether the .npy stream at ``fp`` holds an object (pickled) array."""
    try:
        header = _npy_header(fp)
    except (ValueError, OSError, EOFError):
        return False
    return header is not None and header[2].hasobject


_PICKLED = ("holds Python objects (an object array, which numpy pickles); save a numeric array instead, "
            "e.g. numpy.save(path, numpy.asarray(x, dtype=numpy.float32))")


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
            if self._holds_objects(info):
                raise _data_error(self.spec, f"array '{key}' {_PICKLED}") from exc
            raise _data_error(self.spec, f"array '{key}' cannot be read ({exc}); save the file again") from exc
        self._cache[key] = array
        return array

    def _holds_objects(self, info: zipfile.ZipInfo) -> bool:
        try:
            with self.zip.open(info) as fp:
                return _holds_objects(fp)
        except (OSError, EOFError, zipfile.BadZipFile, struct.error):
            return False

    def close(self) -> None:
        self.zip.close()


def _load_npy(path: Path, spec: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        with open(path, "rb") as fp:
            if _holds_objects(fp):
                raise _data_error(spec, f"the .npy file {_PICKLED}") from exc
        raise _data_error(spec, f"not a valid .npy file ({exc}); save it with numpy.save") from exc


# ---------------------------------------------------------------- opening


def _single_input(spec: str, inputs: Sequence[InputSpec], what: str) -> InputSpec:
    if len(inputs) != 1:
        names = ", ".join(f"'{i.name}'" for i in inputs)
        raise _data_error(
            spec, f"{what} feeds one input but the model has {len(inputs)} ({names}); "
            "give an .npz with one array per input name",
        )
    return inputs[0]


def _finish_arrays(spec: str, inputs: Sequence[InputSpec], arrays: Sequence[np.ndarray], num_samples: int | None,
                   labels: tuple[str, np.ndarray] | None, notes: list[str], labels_asked: bool = True,
                   warnings: Sequence[str] = ()) -> Dataset:
    """Check ``arrays`` against ``inputs`` and feed each as ``checks._feeding`` decides.

    ``labels_asked``: the caller named the labels array; else (an array found under a usual
    labels key) one that is not 1-D is left out with a note, not refused: per-pixel labels of a
    segmentation set must not stop a calibration."""
    feedings = [_feeding(spec, inp, tuple(array.shape)) for inp, array in zip(inputs, arrays)]
    sampled = [(inp, tuple(a.shape)) for inp, a, f in zip(inputs, arrays, feedings) if f is not Feeding.CONSTANT]
    if not sampled:
        raise _data_error(spec, "every array is 0-d (one value for every sample): give at least one input "
                                "its samples, [N, ...]")
    n_total = _check_counts(spec, [i for i, _ in sampled], [shape for _, shape in sampled])
    n = n_total if num_samples is None else min(num_samples, n_total)
    arrays = [a if f is Feeding.CONSTANT else a[:n] for a, f in zip(arrays, feedings)]
    for inp, array in zip(inputs, arrays):
        _check_dtype(spec, inp, array.dtype)
        _scan(spec, inp, array.reshape(1) if array.ndim == 0 else array)
    label_array = labels_note = None
    if labels is not None:
        shape = tuple(np.shape(labels[1]))
        if not labels_asked and not _one_per_sample(shape):
            labels_note = (f"array '{labels[0]}' of shape {list(shape)} is not one class index per sample: "
                           "not used as labels (top-1 needs [N] class indices)")
        else:
            label_array = _labels_array(spec, labels[0], labels[1], n_total)[:n]
    batch = _fixed_batch(spec, inputs, n, notes, feedings)
    sources = [_SOURCES[f](a, inp.dtype) for inp, a, f in zip(inputs, arrays, feedings)]
    return Dataset(spec, inputs, sources, n, label_array, batch, notes, labels_note=labels_note, warnings=warnings)


def _open_npy(spec: str, path: Path, inputs: Sequence[InputSpec], num_samples: int | None) -> Dataset:
    inp = _single_input(spec, inputs, "a .npy file")
    array = _load_npy(path, spec)
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
        warnings: list[str] = []
        chosen: list[str] = []
        missing = [inp.name for inp in inputs if inp.name not in reader.infos]
        if missing:
            candidates = [k for k in keys if k != label_key and k not in input_names]
            if len(inputs) == 1 and len(candidates) == 1:
                chosen = candidates
                warnings.append(f"the .npz has no array named '{inputs[0].name}': its only array '{chosen[0]}' "
                                f"feeds input '{inputs[0].name}'; save it under the input's name to say so")
            else:
                names = ", ".join(f"'{m}'" for m in missing)
                raise _data_error(
                    spec, f"no array for input {names}; the file holds {listed}; name each array after its input",
                )
        else:
            chosen = [inp.name for inp in inputs]
        arrays = [reader.get(k) for k in chosen]
        labels = (label_key, reader.get(label_key)) if label_key is not None else None
        return _finish_arrays(spec, inputs, arrays, num_samples, labels, [], labels_asked=labels_key is not None,
                              warnings=warnings)
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
            raise _data_error(spec, f"input '{inp.name}' is a scalar (shape []); random data does not feed it: "
                                    "give an .npz with its values ([N], or 0-d for every sample)")
        for axis, d in enumerate(inp.shape[1:], start=1):
            if not isinstance(d, int):
                raise _data_error(
                    spec, f"input '{inp.name}' {_fmt_expected(inp.shape)} has dynamic dim {axis} ({_fmt_dim(d)}); "
                    "random data needs every dim but the batch fixed: give a data file (.npy or .npz)",
                )
        sources.append(_RandomSource((n, *(int(d) for d in inp.shape[1:])), inp.dtype, seed, index))
    notes: list[str] = []
    batch = _fixed_batch(spec, inputs, n, notes)
    return Dataset(spec, inputs, sources, n, None, batch, notes, calibration_warnings=[RANDOM_WARNING])


RANDOM_WARNING = ("random data (standard-normal noise) gives poor calibration ranges for a model trained on "
                  "real inputs: give real samples (.npy, .npz or an image folder) with --data")


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
