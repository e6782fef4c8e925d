"""Calibration samples from arrays: ``.npy`` files (memory-mapped) and ``.npz`` files (members
memory-mapped where stored uncompressed; object arrays named as pickled), the sources that
feed them (``_ArraySource`` over a possibly memory-mapped array, ``_PerSampleSource`` and
``_ConstantSource`` for inputs whose axis 0 is not the sample axis, as ``checks._feeding``
decides) and the openers ``_open_npy`` and ``_open_npz`` that ``data.open_data`` dispatches to.
"""

from __future__ import annotations

import math
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aimetcli.calibration.checks import (
    Feeding,
    _check_counts,
    _check_dtype,
    _data_error,
    _feeding,
    _fixed_batch,
    _labels_array,
    _one_per_sample,
    _scan,
    _single_input,
)
from aimetcli.calibration.dataset import Dataset, InputSpec

# Keys of an .npz taken as labels when no key is asked for, in this order of preference.
LABEL_KEYS = ("label", "labels", "y")


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
