"""Streaming statistics of tensors, fed batch by batch (numpy only).

Observers never keep the data they see: :class:`MinMaxObserver` keeps running
minima and maxima, :class:`HistogramObserver` a fixed number of bins (512, as
AIMET's libpymo ``PDF_SIZE``). Both work per tensor or, with ``axis``, per channel
(one statistic per index along that axis; every other axis is reduced).

Non-finite values (NaN, +-Inf) are skipped and counted in ``nonfinite_count`` so
the caller can warn; they never move a range.

Histogram merging (AIMET's ``_HistogramObserver.merge_stats`` / libpymo
``updateTensorHistogram``): the first batch sets the bin range [min, max] (widened
by 1/2 on each side when min == max). A later batch with values outside it grows
the range to [min(old, new), max(old, new)]; every old bin, of width w_s starting
at a, moves into the new bins of width w_d >= w_s: the new bin j holding a gets
round((end_j - a) / w_s * count) of its count and bin j + 1 the rest, so counts
stay integers and their total is preserved exactly. The new batch is then binned
into the grown range: bin = floor((x - min) * B / (max - min)), the maximum going
to the last bin.
"""

from __future__ import annotations


import numpy as np

from aimetcli.kernels.quant import (AIMET_MIN_RANGE, Encoding, QuantScheme, encoding_from_range, is_unsigned_symmetric,
                                    unsigned_symmetric_encoding)
from aimetcli.kernels.range_search import percentile_range, tf_enhanced_encoding_of_bins

__all__ = [
    "DEFAULT_NUM_BINS",
    "EmptyObserverError",
    "HistogramObserver",
    "MinMaxObserver",
    "make_observer",
    "observe_encoding",
]

DEFAULT_NUM_BINS = 512
# Values binned at once: bounds the temporaries for large activations and keeps them in cache.
_CHUNK = 1 << 16
_LANES = 4


def _bin_indices(block: np.ndarray, lo, inv_w, b: int, any_nonfinite: bool, t: np.ndarray,
                 idx: np.ndarray) -> None:
    """idx = floor((block - lo) * inv_w), through the work buffer ``t`` (its dtype is the
    arithmetic's). With non-finite values about, t is clipped to [0, B] first, so that NaN/Inf
    (and channels without a range) index nothing out of bounds; the callers then drop them."""
    np.subtract(block, lo, out=t, dtype=t.dtype)
    t *= inv_w
    if any_nonfinite:
        np.clip(t, 0, b, out=t)
    with np.errstate(invalid="ignore"):
        np.copyto(idx, t, casting="unsafe")  # truncation is floor here: t >= 0


class EmptyObserverError(ValueError):
    """No finite value has been observed (all batches empty, NaN or Inf)."""


def _first_range(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bins' range for data in [lo, hi]: itself, or +-0.5 around a single value (relatively
    more where 0.5 is below float64 resolution, |x| > 2**52)."""
    same = lo == hi
    half = np.maximum(0.5, np.abs(lo) * 2.0**-20)
    return np.where(same, lo - half, lo), np.where(same, hi + half, hi)


def _channels_first(x: np.ndarray, axis: int | None) -> np.ndarray:
    """View (or copy) of x as (C, N): C = 1 per tensor, C = x.shape[axis] per channel."""
    if axis is None:
        return x.reshape(1, -1)
    if x.ndim == 0:
        raise ValueError("a scalar has no channel axis")
    ax = axis + x.ndim if axis < 0 else axis
    if not 0 <= ax < x.ndim:
        raise ValueError(f"axis {axis} out of range for a {x.ndim}-D tensor")
    return np.moveaxis(x, ax, 0).reshape(x.shape[ax], -1)


def _batch_minmax(x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-row finite min and max (NaN where a row has no finite value) and the non-finite count."""
    if x2.shape[1] == 0:
        nan = np.full(x2.shape[0], np.nan)
        return nan, nan.copy(), 0
    lo, hi = x2.min(axis=1), x2.max(axis=1)
    if np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):  # NaN and +-Inf would show in min or max
        return lo.astype(np.float64), hi.astype(np.float64), 0
    finite = np.isfinite(x2)
    bad = int(finite.size - np.count_nonzero(finite))
    lo = np.where(finite, x2, np.inf).min(axis=1).astype(np.float64)
    hi = np.where(finite, x2, -np.inf).max(axis=1).astype(np.float64)
    empty = ~finite.any(axis=1)
    lo[empty] = np.nan
    hi[empty] = np.nan
    return lo, hi, bad


def _as_float_array(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"cannot observe a tensor of dtype {x.dtype}")
    return x if x.dtype.kind == "f" else x.astype(np.float64)


class MinMaxObserver:
    """Running minimum and maximum of every finite value seen (per channel with ``axis``)."""

    def __init__(self, axis: int | None = None):
        self.axis = axis
        self.nonfinite_count = 0
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x2 = _channels_first(_as_float_array(x), self.axis)
        lo, hi, bad = _batch_minmax(x2)
        self.nonfinite_count += bad
        if self._min is None:
            self._min, self._max = lo, hi
            return
        if lo.shape != self._min.shape:
            raise ValueError(f"batch has {lo.size} channels, earlier batches had {self._min.size}")
        self._min = np.fmin(self._min, lo)  # fmin/fmax ignore the NaN of channels without data
        self._max = np.fmax(self._max, hi)

    @property
    def observed(self) -> bool:
        """True once a finite value has been seen on every channel."""
        return self._min is not None and not np.any(np.isnan(self._min))

    def result(self):
        """(min, max): floats per tensor, float64 arrays per channel."""
        if not self.observed:
            raise EmptyObserverError("no finite values observed" if self._min is None or self.axis is None
                                     else "some channels have no finite values observed")
        if self.axis is None:
            return float(self._min[0]), float(self._max[0])
        return self._min.copy(), self._max.copy()


class HistogramObserver:
    """Fixed-bin histogram whose range grows with the data, merged as AIMET does (module docstring).

    ``value_range``: (min, max) of everything the observer will see, known in advance (a
    reductions pass over the same data); the bins then span that range from the start (widened
    by 1/2 on each side when min == max, as a first batch's) and never move, so every count is
    exact: the histogram is ``np.histogram`` over that range, whatever the batches and their
    order. The grown histogram ends on the same range (the union of the batches' ranges) with
    the counts of its earlier batches re-binned approximately. A value outside the given range
    (the reductions' last bit against the copied-out tensor's) counts in the end bin it is past.
    """

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS, axis: int | None = None,
                 value_range: tuple | None = None):
        if int(num_bins) < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.num_bins = int(num_bins)
        self.axis = axis
        self.nonfinite_count = 0
        self._counts: np.ndarray | None = None  # (C, B) int64
        self._lo: np.ndarray | None = None  # histogram range per channel
        self._hi: np.ndarray | None = None
        self._min: np.ndarray | None = None  # exact observed extremes per channel
        self._max: np.ndarray | None = None
        self._fixed = None
        if value_range is not None:
            lo, hi = (np.atleast_1d(np.asarray(v, np.float64)) for v in value_range)
            if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo <= hi)):
                raise ValueError(f"value_range must be finite with min <= max, got {value_range}")
            self._fixed = _first_range(lo, hi)

    # -- feeding -------------------------------------------------------------------
    def update(self, x: np.ndarray) -> None:
        x2 = _channels_first(_as_float_array(x), self.axis)
        lo, hi, bad = _batch_minmax(x2)
        self.nonfinite_count += bad
        c = lo.size
        if self._counts is None:
            self._counts = np.zeros((c, self.num_bins), dtype=np.int64)
            self._lo = np.full(c, np.nan)
            self._hi = np.full(c, np.nan)
            self._min = np.full(c, np.nan)
            self._max = np.full(c, np.nan)
            if self._fixed is not None:
                self._lo, self._hi = (np.broadcast_to(v, (c,)).copy() for v in self._fixed)
        elif c != self._counts.shape[0]:
            raise ValueError(f"batch has {c} channels, earlier batches had {self._counts.shape[0]}")
        self._min = np.fmin(self._min, lo)
        self._max = np.fmax(self._max, hi)

        has_data = ~np.isnan(lo)
        if self._fixed is not None:  # the bins never move; what lies beyond them is clipped into the end bins
            if has_data.any():
                self._add(x2, bad > 0 or bool(np.any(lo[has_data] < self._lo[has_data]))
                          or bool(np.any(hi[has_data] > self._hi[has_data])))
            return
        fresh = has_data & np.isnan(self._lo)
        if fresh.any():  # first data on these channels sets their range
            self._lo[fresh], self._hi[fresh] = _first_range(lo[fresh], hi[fresh])
        grow = has_data & ~fresh & ((lo < self._lo) | (hi > self._hi))
        if grow.any():
            self._rebin(grow, np.fmin(self._lo, lo), np.fmax(self._hi, hi))
        if has_data.any():
            self._add(x2, bad > 0)

    def _rebin(self, rows: np.ndarray, new_lo: np.ndarray, new_hi: np.ndarray) -> None:
        b = self.num_bins
        idx = np.flatnonzero(rows)
        counts = self._counts[idx].astype(np.float64)
        src_lo, src_hi = self._lo[idx], self._hi[idx]
        dst_lo, dst_hi = new_lo[idx], new_hi[idx]
        src_w = (src_hi - src_lo) / b
        dst_w = (dst_hi - dst_lo) / b
        start = src_lo[:, None] + src_w[:, None] * np.arange(b)[None, :]
        first = np.clip(np.floor((start - dst_lo[:, None]) / dst_w[:, None]), 0, b - 1).astype(np.int64)
        first_end = dst_lo[:, None] + dst_w[:, None] * (first + 1)
        part = np.minimum(np.rint((first_end - start) / src_w[:, None] * counts), counts)
        part = np.maximum(part, 0.0)
        second = np.minimum(first + 1, b - 1)
        offsets = (np.arange(idx.size) * b)[:, None]
        merged = np.bincount((first + offsets).ravel(), weights=part.ravel(), minlength=idx.size * b)
        merged += np.bincount((second + offsets).ravel(), weights=(counts - part).ravel(), minlength=idx.size * b)
        self._counts[idx] = np.rint(merged).astype(np.int64).reshape(idx.size, b)
        self._lo[idx] = dst_lo
        self._hi[idx] = dst_hi

    def _add(self, x2: np.ndarray, any_nonfinite: bool) -> None:
        """Bin the batch into the current ranges: bin = floor((x - lo) * B / (hi - lo)), clipped to [0, B-1].

        float32 data is binned in float32 (an error far below a bin width), float64 in float64.
        Every finite value lies in its channel's range (update() grew it first), so x - lo >= 0
        (rounding is monotone) and only the range's maximum can land on B: each channel counts
        B + 1 bins and the last is folded into bin B-1, instead of clipping every value.
        ``any_nonfinite`` (also set for values beyond a fixed range): clip, and bin finite values only.
        Per tensor, neighbouring values are counted in _LANES separate histograms (summed at the
        end): activations repeat values (zeros after Relu), and increments of one counter back
        to back wait on each other. Per channel, blocks of whole
        channels of about _CHUNK values are binned at once, so that each bincount covers few
        channels' bins.
        """
        c, n = x2.shape
        b = self.num_bins
        known = ~np.isnan(self._lo)
        inv_w64 = b / np.where(known, self._hi - self._lo, 1.0)
        narrow = x2.dtype != np.float64 and np.all(np.abs(inv_w64) < np.finfo(np.float32).max)
        work = np.float32 if narrow else np.float64
        lo_all = np.where(known, self._lo, 0.0).astype(work)[:, None]
        inv_all = inv_w64.astype(work)[:, None]
        row = b + 1
        lanes = _LANES if c == 1 else 1
        per_block = max(1, min(c, _CHUNK // max(n, 1)))  # channels binned together
        step = max(1, _CHUNK // per_block)  # values per channel and bincount
        width = min(step, n)
        t_buf = np.empty((per_block, width), work)
        # int32 indices: float32 -> int32 converts 5x faster than -> int64, which bincount's own
        # conversion does not give back (1.90 -> 1.53 ns a value); lanes x per_block x row < 2**26
        i_buf = np.empty((per_block, width), np.int32)
        # index = lane * (channels * row) + channel * row + bin
        offsets = (np.arange(per_block, dtype=np.int32) * row)[:, None] + (
            (np.arange(width, dtype=np.int32) % lanes) * (per_block * row))
        for c0 in range(0, c, per_block):
            k = min(per_block, c - c0)
            lo, inv_w = lo_all[c0:c0 + k], inv_all[c0:c0 + k]
            total = np.zeros(lanes * per_block * row, dtype=np.int64)
            for start in range(0, n, step):
                block = x2[c0:c0 + k, start:start + step]
                m = block.shape[1]
                t, idx = t_buf[:k, :m], i_buf[:k, :m]
                _bin_indices(block, lo, inv_w, b, any_nonfinite, t, idx)
                idx += offsets[:k, :m]
                flat = idx[np.isfinite(block)] if any_nonfinite else idx.reshape(-1)
                total += np.bincount(flat, minlength=total.size)
            counts = total.reshape(lanes, per_block, row).sum(axis=0)[:k]
            counts[:, b - 1] += counts[:, b]
            self._counts[c0:c0 + k] += counts[:, :b]

    # -- reading -------------------------------------------------------------------
    @property
    def observed(self) -> bool:
        return self._min is not None and not np.any(np.isnan(self._min))

    def _require(self) -> None:
        if not self.observed:
            raise EmptyObserverError("no finite values observed" if self._min is None or self.axis is None
                                     else "some channels have no finite values observed")

    @property
    def total_count(self) -> int:
        """Number of finite values binned so far (all channels)."""
        return 0 if self._counts is None else int(self._counts.sum())

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts int64, bin edges float64): (B,), (B+1,) per tensor; (C, B), (C, B+1) per channel."""
        self._require()
        b = self.num_bins
        edges = self._lo[:, None] + (self._hi - self._lo)[:, None] * (np.arange(b + 1)[None, :] / b)
        edges[:, -1] = self._hi
        if self.axis is None:
            return self._counts[0].copy(), edges[0]
        return self._counts.copy(), edges

    def bins(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(counts (C, B) int64, lo (C,), hi (C,)): each row's bins split [lo, hi] evenly; the
        observer's own arrays (read them, do not write), :meth:`histogram` without its edges."""
        self._require()
        return self._counts, self._lo, self._hi

    def minmax(self):
        """Exact (min, max) of the finite values seen: floats per tensor, arrays per channel."""
        self._require()
        if self.axis is None:
            return float(self._min[0]), float(self._max[0])
        return self._min.copy(), self._max.copy()


Observer = MinMaxObserver | HistogramObserver


def observed_range(observer: Observer):
    """(min, max) of the finite values ``observer`` saw, either kind: floats per tensor, arrays per
    channel (:meth:`MinMaxObserver.result`, :meth:`HistogramObserver.minmax`)."""
    return observer.result() if isinstance(observer, MinMaxObserver) else observer.minmax()


def make_observer(scheme: QuantScheme, *, axis: int | None = None,
                  num_bins: int = DEFAULT_NUM_BINS, value_range: tuple | None = None) -> Observer:
    """The observer a scheme needs: min/max for MIN_MAX, a histogram for TF_ENHANCED and PERCENTILE
    (``value_range``: its fixed range, :class:`HistogramObserver`)."""
    scheme = QuantScheme(scheme)
    if scheme is QuantScheme.MIN_MAX:
        return MinMaxObserver(axis=axis)
    return HistogramObserver(num_bins=num_bins, axis=axis, value_range=value_range)


def observe_encoding(observer: Observer, scheme: QuantScheme, bitwidth: int, symmetric: bool, *,
                     percentile: float = 99.99, strict_symmetric: bool = False,
                     min_range: float = AIMET_MIN_RANGE, unsigned_symmetric: bool = False) -> Encoding:
    """The encoding for what ``observer`` saw, under ``scheme``.

    MIN_MAX: :func:`encoding_from_range` of the exact min/max (either observer).
    PERCENTILE: :func:`percentile_range` of the histogram, then :func:`encoding_from_range`
    with no minimum range (as libpymo; the percentile range is at least one bin wide).
    TF_ENHANCED: :func:`tf_enhanced_encoding` of the histogram.
    ``min_range`` (AIMET: 0.01) applies to MIN_MAX and TF_ENHANCED.
    Per-channel observers give per-channel encodings on the observer's axis.
    ``unsigned_symmetric`` (AIMET's config flag): a symmetric quantizer that saw no negative
    value gets the grid [0, range] with offset 0 (unsigned integers), as AIMET does.
    Raises :class:`EmptyObserverError` when nothing finite was observed.
    """
    scheme = QuantScheme(scheme)
    if symmetric and unsigned_symmetric:
        lo, _ = observed_range(observer)
        if is_unsigned_symmetric(symmetric, unsigned_symmetric, lo):
            return _unsigned(observer, scheme, bitwidth, percentile, min_range)
    if scheme is QuantScheme.MIN_MAX:
        lo, hi = observed_range(observer)
        return encoding_from_range(lo, hi, bitwidth, symmetric, strict_symmetric=strict_symmetric,
                                   axis=observer.axis, min_range=min_range)
    if not isinstance(observer, HistogramObserver):
        raise TypeError(f"scheme {scheme.value} needs a HistogramObserver, got {type(observer).__name__}")
    if scheme is QuantScheme.PERCENTILE:  # libpymo's percentile path has no minimum range
        counts, edges = observer.histogram()
        lo, hi = percentile_range(counts, edges, percentile)
        return encoding_from_range(lo, hi, bitwidth, symmetric, strict_symmetric=strict_symmetric,
                                   axis=observer.axis, min_range=0.0)
    return _tf_enhanced(observer, bitwidth, symmetric, strict_symmetric, min_range)


def _tf_enhanced(observer: HistogramObserver, bitwidth: int, symmetric: bool, strict_symmetric: bool,
                 min_range: float) -> Encoding:
    """:func:`tf_enhanced_encoding` of the observer's histogram, from its bins (no edges array)."""
    counts, lo, hi = observer.bins()
    return tf_enhanced_encoding_of_bins(counts, lo, hi, bitwidth, symmetric, single=observer.axis is None,
                                        strict_symmetric=strict_symmetric, axis=observer.axis, min_range=min_range)


def _unsigned(observer: Observer, scheme: QuantScheme, bitwidth: int, percentile: float,
              min_range: float) -> Encoding:
    """AIMET's unsigned symmetric grid for data >= 0: [0, range of the scheme], offset 0."""
    if scheme is QuantScheme.MIN_MAX:
        _, hi = observed_range(observer)
    else:
        if scheme is QuantScheme.PERCENTILE:
            _, hi = percentile_range(*observer.histogram(), percentile)
            min_range = 0.0
        else:  # the symmetric search, then its positive half on the unsigned grid
            sym = _tf_enhanced(observer, bitwidth, True, False, min_range)
            hi = np.asarray(sym.max, np.float64)
    return unsigned_symmetric_encoding(hi, bitwidth, axis=observer.axis, min_range=min_range)
