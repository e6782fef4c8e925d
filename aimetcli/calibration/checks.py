"""Validation of calibration data against the model's inputs, and the wording of its errors:
``_data_error`` (the one-line ``--data SPEC: ...`` error), the ``_fmt_*`` shape formatters,
``_kind`` (the dtype family), the shape, dtype, sample-count and label checks, the chunked
NaN/Inf and overflow ``_scan`` (``_SCAN_CHUNK`` elements at a time) and ``_fixed_batch``,
which applies a model's fixed batch size. Used by ``data`` and ``readers``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aimetcli.calibration.dataset import Dim, InputSpec
from aimetcli.errors import AimetCliError, ErrorKind

# Elements looked at at once when scanning data for NaN/Inf and ranges.
_SCAN_CHUNK = 1 << 22


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


def _one_per_sample(shape: tuple[int, ...]) -> bool:
    """Whether a labels array of this shape holds one class index per sample: [N] or [N, 1]."""
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


def _labels_array(spec: str, key: str, raw: np.ndarray, n_total: int) -> np.ndarray:
    labels = np.asarray(raw)
    if not _one_per_sample(labels.shape):
        raise _data_error(
            spec, f"labels '{key}' has shape {_fmt_shape(labels.shape)}; expected one class index per sample [N]"
        )
    labels = labels.reshape(-1)
    if labels.shape[0] != n_total:
        raise _data_error(spec, f"labels '{key}' has {labels.shape[0]} entries but the data has {n_total} samples")
    kind = _kind(labels.dtype)
    if kind == "float":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise _data_error(spec, f"labels '{key}' holds non-integer values; expected class indices")
    elif kind != "integer":
        raise _data_error(spec, f"labels '{key}' is {labels.dtype.name}; expected integer class indices")
    return labels.astype(np.int64)
