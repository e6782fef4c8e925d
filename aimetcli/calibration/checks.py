"""Validation of calibration data against the model's inputs, and the wording of its errors:
``_data_error`` (the one-line ``--data SPEC: ...`` error), the ``_fmt_*`` shape formatters,
``_kind`` (the dtype family), ``_feeding`` (how an input's data is fed: the ``Feeding``
rule), the shape, dtype, sample-count and label checks, the chunked NaN/Inf and overflow
``_scan`` (``_SCAN_CHUNK`` elements at a time) and ``_fixed_batch``, which applies a model's
fixed batch size, and ``_single_input`` for the formats that feed one input. Used by ``data`` and
the source modules (``arrays``, ``images``, ``random_data``).
"""

from __future__ import annotations

import enum
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


def _fmt_shape(shape: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _kind(dtype: np.dtype) -> str:
    if dtype.kind == "f" or dtype.name.startswith(("float", "bfloat")):
        return "float"
    if dtype.kind in "iu":
        return "integer"
    if dtype.kind == "b":
        return "bool"
    return "other"


class Feeding(enum.Enum):
    """How the data of one input reaches the model (decided by ``_feeding``).

    BATCHED: data ``[N, *sample]`` for an input whose axis 0 is the sample axis; a run
    gets a slice ``[B, *sample]``. PER_SAMPLE: data ``[N, *shape]`` holding one whole
    input tensor per sample, for an input whose fixed axis 0 is not the sample axis (a
    recurrent state ``[layers, B, H]``, a scalar ``[]`` fed from an ``[N]`` array); the
    model then runs once per sample, each run fed ``data[i]``. CONSTANT: a 0-d array
    for a scalar input, the same value fed to every run.
    """

    BATCHED = "batched"
    PER_SAMPLE = "per-sample"
    CONSTANT = "constant"


def _fits(want: Sequence[Dim], got: Sequence[int]) -> bool:
    return len(want) == len(got) and all(not isinstance(w, int) or w == g for w, g in zip(want, got))


def _feeding(spec: str, inp: InputSpec, shape: tuple[int, ...]) -> Feeding:
    """The rule: data of the input's rank is batched (axis 0 the sample axis, the other fixed
    dims must match); data of one more dim whose ``shape[1:]`` fits the input's whole shape is
    fed per sample when the input's axis 0 is fixed (a dynamic axis 0 is a batch axis, and
    such data a mistake); an [N] array for a scalar input is fed per sample, a 0-d one is a
    constant. Anything else is refused."""
    if inp.shape is not None and not inp.shape:
        if len(shape) <= 1:
            return Feeding.CONSTANT if not shape else Feeding.PER_SAMPLE
        raise _data_error(
            spec, f"input '{inp.name}' is a scalar (shape []) but the data has {_fmt_shape(shape)}; "
            "give one value per sample [N], or a 0-d array for every sample",
        )
    if (inp.shape is not None and isinstance(inp.shape[0], int) and len(shape) == len(inp.shape) + 1
            and _fits(inp.shape, shape[1:])):
        return Feeding.PER_SAMPLE
    if not shape and inp.shape is not None:
        raise _data_error(spec, f"input '{inp.name}' expects {_fmt_expected(inp.shape)} but the data is a scalar")
    _check_shape(spec, inp, shape)
    return Feeding.BATCHED


def _check_shape(spec: str, inp: InputSpec, shape: tuple[int, ...], hint: str = "") -> None:
    """Batched data: the input's rank, and its fixed dims past the sample axis."""
    if inp.shape is None:
        if not shape:
            raise _data_error(spec, f"input '{inp.name}' got a scalar; the data needs a sample axis [N, ...]")
        return
    if not inp.shape:
        raise _data_error(
            spec, f"input '{inp.name}' is a scalar (shape []): give one value per sample [N] in an .npz, "
            "or a 0-d array for every sample",
        )
    if not (len(shape) == len(inp.shape) and _fits(inp.shape[1:], shape[1:])):
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


def _fixed_batch(spec: str, inputs: Sequence[InputSpec], n: int, notes: list[str],
                 feedings: Sequence[Feeding] | None = None) -> int | None:
    """The samples every run must hold, or None when any count will do. An input fed per
    sample makes it 1; the other inputs' fixed batch sizes (axis 0 of batched inputs) must
    then be 1, and must otherwise agree."""
    feedings = list(feedings) if feedings is not None else [Feeding.BATCHED] * len(inputs)
    batched = [inp for inp, f in zip(inputs, feedings) if f is Feeding.BATCHED]
    fixed = {inp.name: inp.batch for inp in batched if inp.batch is not None}
    per_sample = [inp.name for inp, f in zip(inputs, feedings) if f is Feeding.PER_SAMPLE]
    if per_sample:
        listed = ", ".join(f"'{k}'" for k in per_sample)
        if wrong := {k: v for k, v in fixed.items() if v != 1}:
            other = ", ".join(f"'{k}' fixes a batch of {v}" for k, v in wrong.items())
            raise _data_error(
                spec, f"input {listed} is fed one sample per run (its data holds one whole tensor per sample) but "
                f"{other}; give that input's data as [N, *shape] too, or re-export the model with batch 1",
            )
        notes.append(f"input {listed} is fed one sample per run (data [N, *shape]): the model runs once per sample")
        return 1
    if not fixed:
        return None
    values = set(fixed.values())
    if len(values) > 1:
        listed = ", ".join(f"'{k}' {v}" for k, v in fixed.items())
        state = max((i for i in batched if i.batch is not None), key=lambda i: i.batch)
        example = _fmt_shape(["N", *(_fmt_dim(d) for d in state.shape or ())])
        raise _data_error(
            spec, f"the model's inputs fix different batch sizes ({listed}); when an input's axis 0 is not the "
            f"sample axis (a recurrent state), give its data with a sample axis in front, one tensor per sample "
            f"(e.g. '{state.name}' as {example}): it is then fed one sample per run",
        )
    batch = values.pop()
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


def _single_input(spec: str, inputs: Sequence[InputSpec], what: str) -> InputSpec:
    if len(inputs) != 1:
        names = ", ".join(f"'{i.name}'" for i in inputs)
        raise _data_error(
            spec, f"{what} feeds one input but the model has {len(inputs)} ({names}); "
            "give an .npz with one array per input name",
        )
    return inputs[0]
