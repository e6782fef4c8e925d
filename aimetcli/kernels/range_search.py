"""Range search over histograms: AIMET's TF-enhanced (SQNR) search and percentile clipping.

Histograms are ``counts`` of shape (B,) with ``bin_edges`` (B+1,), or (C, B) with
(C, B+1) for per-channel statistics; results are then per channel.

TF-enhanced (AIMET ``post_training_tf_enhanced``; the grid and cost of
aimet_torch's vectorised ``SqnrEncodingAnalyzer``, the same search as libpymo's
``TfEnhancedEncodingAnalyzer``):

  observed range  [lo, hi] = edges of the outermost non-empty bins, widened to hold 0,
                  hi = max(hi, lo + min_range) (AIMET: 0.01)
  asymmetric      d0 = (hi - lo) / N, o0 = round(lo / d0)            (N = num_steps)
                  deltas   d = d0 * k / 16, k = 1..17                (17 candidates)
                  offsets  o = round(-N + N * i / 19), i = 0..19, and o0  (21 candidates)
                  each (d, o) is clamped to the observed grid [d0 o0, d0 (o0 + N)]:
                  m = max(d0 o0, d o), M = min(d0 (o0 + N), d (o + N)),
                  d = (M - m) / N, o = round(m / d)
  symmetric       d = (2 max(|lo|, |hi|) / N) * k / 100, k = 1..101, o = floor(-N / 2)
  cost(d, o)      with m_i the bin mid-points and h_i the counts:
                  q_i = round(m_i / d - o); e_i = (clamp(q_i, 0, N) + o) d - m_i
                  cost = sum_i h_i e_i^2 * (3.0 if q_i was clamped else 1)
  the candidate of least cost wins; among costs equal within TIE (relatively), the last one,
                  whose delta is the largest; its (d, o) is the encoding.
  (libpymo's C++ loop differs in details that do not matter here: it reuses the
  clamped delta across offsets and skips candidates wider than the observed range.)

Percentile (AIMET ``post_training_percentile``, libpymo ``PercentileEncodingAnalyzer``
and aimet_torch's ``PercentileEncodingAnalyzer`` agree): ``percentile`` p in [50, 100]
clips (100 - p)% of the values *on each side*: min = left edge of the first bin whose
cumulative count reaches (1 - p/100) * total, max = left edge of the first bin whose
cumulative count reaches p/100 * total (one bin width above min if they coincide);
p = 100 keeps the full non-empty range. (onnxruntime's calibrator instead splits
100 - p over both tails; AIMET's convention is kept.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aimetcli.kernels.quant import (
    AIMET_MIN_RANGE,
    Encoding,
    check_bitwidth,
    minimum_scale,
    num_steps,
)

__all__ = ["GAMMA", "percentile_range", "tf_enhanced_encoding", "tf_enhanced_encoding_of_bins", "tf_enhanced_range"]

GAMMA = 3.0  # weight of clipping noise against rounding noise (AIMET)
ASYM_DELTA_CANDIDATES = 17
SYM_DELTA_CANDIDATES = 101
OFFSET_CANDIDATES = 21
# Candidates x bins evaluated at once: small blocks stay in cache and below malloc's mmap threshold.
_CHUNK_ELEMENTS = 1 << 14
# Costs this close (relatively) are one, and the widest grid among them wins. Channels far below
# the minimum range have dozens of candidates of the same cost (every value on grid index 0),
# among which float noise (about 1e-15 here) used to pick; the widest leaves the most room to the
# int32 grid a runtime stores the layer's bias on (input scale x weight scale, quantsim/bias_grid.py):
# PP-OCRv5 det has such channels in 25 of its weights.
TIE = 1e-12
_ROWS_AT_ONCE = 256  # rows searched together, padded to the most occupied bins among them (_best)


def _as_2d(hist, bin_edges) -> tuple[np.ndarray, np.ndarray, bool]:
    h = np.asarray(hist, dtype=np.float64)
    e = np.asarray(bin_edges, dtype=np.float64)
    single = h.ndim == 1
    if single:
        h, e = h[None, :], e[None, :]
    if h.ndim != 2 or e.ndim != 2 or e.shape != (h.shape[0], h.shape[1] + 1) or h.shape[1] < 1:
        raise ValueError(f"histogram of shape {np.shape(hist)} does not fit bin edges of shape {np.shape(bin_edges)}")
    if np.any(h < 0) or not np.all(np.isfinite(h)):
        raise ValueError("histogram counts must be finite and >= 0")
    if not np.all(np.isfinite(e)) or np.any(np.diff(e, axis=1) <= 0):
        raise ValueError("bin edges must be finite and increasing")
    if np.any(h.sum(axis=1) <= 0):
        raise ValueError("histogram is empty: no values were observed")
    return h, e, single


@dataclass(frozen=True)
class _Occupied:
    """The non-empty bins of C histogram rows, row after row in bin order: their ``counts`` and
    ``mids`` (bin mid-points), ``first[r]`` the index of row r's first one, ``n[r]`` how many;
    ``lo`` / ``hi``: the left edge of each row's first non-empty bin and the right edge of its
    last. Empty bins cost nothing in the search, and a per-channel weight's row of 512 bins has
    only as many non-empty ones as the channel has values."""

    counts: np.ndarray  # (total,) float64
    mids: np.ndarray  # (total,) float64
    first: np.ndarray  # (C,) intp
    n: np.ndarray  # (C,) intp
    lo: np.ndarray  # (C,) float64
    hi: np.ndarray

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(counts, mids) of ``rows`` as (G, n) arrays, n the most non-empty bins of any of them; a
        row with fewer repeats its last mid-point with count 0 (sorted still, and costing nothing)."""
        n = self.n[rows]
        at = self.first[rows][:, None] + np.minimum(np.arange(int(n.max()))[None, :], (n - 1)[:, None])
        return np.where(np.arange(at.shape[1])[None, :] < n[:, None], self.counts[at], 0.0), self.mids[at]


def _occupied(h: np.ndarray, edges: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> _Occupied:
    """:class:`_Occupied` of counts ``h`` (C, B), every row with a non-empty bin (both callers make
    sure: ``_as_2d`` refuses an empty row, an observer raises before it has one); ``edges(rows, j)``:
    the left and right edges of bin j of each row."""
    rows, bins = np.nonzero(h > 0)
    n = np.bincount(rows, minlength=h.shape[0])
    first = np.concatenate([[0], np.cumsum(n)[:-1]])
    left, right = edges(rows, bins)
    ends = first + n - 1
    return _Occupied(h[rows, bins].astype(np.float64), (left + right) * 0.5, first, n, left[first], right[ends])


def _of_edges(h: np.ndarray, e: np.ndarray) -> _Occupied:
    return _occupied(h, lambda rows, j: (e[rows, j], e[rows, j + 1]))


def _of_range(h: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> _Occupied:
    """Bins of equal width over [lo, hi] per row: edge j = lo + (hi - lo) * (j / B), the last one hi
    (the float arithmetic of :meth:`HistogramObserver.histogram`'s edges, so the same numbers)."""
    b = h.shape[1]
    width = hi - lo

    def edges(rows: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start, span = lo[rows], width[rows]
        return start + span * (j / b), np.where(j + 1 == b, hi[rows], start + span * ((j + 1) / b))

    return _occupied(h, edges)


def _candidates(lo, hi, steps: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Candidate (delta, offset) grids, each of shape (C, K)."""
    tiny = minimum_scale(steps)
    if symmetric:
        k = np.arange(1, SYM_DELTA_CANDIDATES + 1, dtype=np.float64) / (SYM_DELTA_CANDIDATES - 1)
        d_max = 2.0 * np.maximum(hi, -lo) / steps
        deltas = np.maximum(d_max[:, None] * k[None, :], tiny)
        offsets = np.full_like(deltas, float(-((steps + 1) // 2)))  # floor(-N / 2)
        return deltas, offsets
    d0 = (hi - lo) / steps
    o0 = np.rint(lo / d0)
    obs_min = d0 * o0
    obs_max = obs_min + d0 * steps
    k = np.arange(1, ASYM_DELTA_CANDIDATES + 1, dtype=np.float64) / (ASYM_DELTA_CANDIDATES - 1)
    n_off = min(steps + 2, OFFSET_CANDIDATES)
    grid = np.rint(-steps + steps * np.arange(n_off - 1, dtype=np.float64) / (n_off - 2))
    offs = np.concatenate([np.broadcast_to(grid, (lo.size, grid.size)), o0[:, None]], axis=1)  # (C, O)
    d = d0[:, None, None] * k[None, :, None]  # (C, D, 1)
    t_min = np.maximum(obs_min[:, None, None], d * offs[:, None, :])
    t_max = np.minimum(obs_max[:, None, None], d * (offs[:, None, :] + steps))
    deltas = np.maximum((t_max - t_min) / steps, tiny)
    offsets = np.rint(t_min / deltas)
    c = lo.size
    return deltas.reshape(c, -1), offsets.reshape(c, -1)


def _best(occ: _Occupied, deltas: np.ndarray, offsets: np.ndarray,
          steps: int, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the (delta, offset) of least expected quantization + gamma * clipping noise.

    Same cost as the module docstring with fewer passes over the (candidates x bins)
    grid. The offset is an integer, so it does not move the rounding: a mid-point m
    falls on grid index rint(m / d) and is kept iff o <= rint(m / d) <= o + N. Kept
    bins form one run [i0, i1) of the sorted mid-points; their rounding noise is
    d^2 sum h (rint(m/d) - m/d)^2, and the clipping noise of the bins below (above)
    the run, sum h (m - L)^2 with L = d o (d (o + N)), comes from prefix sums of
    h, h m and h m^2 around the weighted mean (well conditioned).

    Only the candidates that can win get their rounding noise (the one pass over every
    bin): cost = rounding + clipping >= clipping, in floats too (adding a number >= 0 never
    lowers a float sum), so a candidate whose clipping alone exceeds the full cost of
    another cannot be the least, nor tie with it. Each row's run ends (i0, i1) come from a
    binary search over its sorted mid-points (rint(m / d) never decreases along them), its
    clipping noise from the prefix sums, and the full cost of the candidate that clips least
    bounds the rest: on ViT-tiny's and PP-OCRv5 rec's weights, 1-4% of the candidates are
    left. The winner is the exhaustive search's, but among costs equal to float noise (TIE).
    """
    c, k = deltas.shape
    best_d = np.empty(c)
    best_o = np.empty(c)
    for start in range(0, c, _ROWS_AT_ONCE):  # rows together (per-channel weights)
        group = np.arange(start, min(start + _ROWS_AT_ONCE, c))
        counts, mids = occ.rows(group)
        best_d[group], best_o[group] = _best_of_rows(counts, mids, deltas[group], offsets[group], steps, gamma)
    return best_d, best_o


def _prefix_length(predicate: Callable[[np.ndarray], np.ndarray], n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Per element of ``shape``, how many leading indices j in [0, n) ``predicate(j)`` holds for
    (an array of indices in, booleans out; true on a prefix): binary lifting, one power of two at
    a time from the largest."""
    pos = np.zeros(shape, np.intp)
    step = 1 << (max(n, 1).bit_length() - 1)
    while step:
        reach = pos + step
        fits = reach <= n
        pos = np.where(fits & predicate(np.minimum(reach, n) - 1), reach, pos)
        step >>= 1
    return pos


def _best_of_rows(counts, mids, d, o, steps: int, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_best` of G rows: (G, n) ``counts`` and ``mids`` (:meth:`_Occupied.rows`), (G, K)
    candidates ``d`` and ``o``."""
    g, k = d.shape
    n = counts.shape[1]
    center = np.einsum("gn,gn->g", counts, mids) / counts.sum(axis=1)
    mc = mids - center[:, None]
    zero = np.zeros((g, 1))
    s0 = np.concatenate([zero, np.cumsum(counts, axis=1)], axis=1)
    s1 = np.concatenate([zero, np.cumsum(counts * mc, axis=1)], axis=1)
    s2 = np.concatenate([zero, np.cumsum(counts * mc * mc, axis=1)], axis=1)
    inv = 1.0 / d
    lower = o * d
    upper = (o + steps) * d
    rows = np.arange(g)[:, None]

    def index(j: np.ndarray) -> np.ndarray:  # grid index rint(m / d) of mid-point j, per candidate
        return np.rint(mids[rows, j] * inv)

    i0 = _prefix_length(lambda j: index(j) < o, n, (g, k))  # clipped below: a prefix
    top = o + steps
    i1 = _prefix_length(lambda j: index(j) <= top, n, (g, k))  # not clipped above: a prefix
    lc = lower - center[:, None]
    uc = upper - center[:, None]
    clip_low = s2[rows, i0] - 2.0 * lc * s1[rows, i0] + lc * lc * s0[rows, i0]
    clip_high = ((s2[:, n:] - s2[rows, i1]) - 2.0 * uc * (s1[:, n:] - s1[rows, i1])
                 + uc * uc * (s0[:, n:] - s0[rows, i1]))
    clipping = gamma * (np.maximum(clip_low, 0.0) + np.maximum(clip_high, 0.0))
    costs = np.full((g, k), np.inf)
    every = np.arange(g)
    first = np.argmin(clipping, axis=1)  # its full cost bounds every row's least
    _fill_costs(costs, every, first, counts, mids, d, inv, i0, i1, clipping)
    left = clipping <= costs[every, first][:, None] * (1.0 + TIE)
    left[every, first] = False  # costed already
    _fill_costs(costs, *np.nonzero(left), counts, mids, d, inv, i0, i1, clipping)
    least = costs <= costs.min(axis=1, keepdims=True) * (1.0 + TIE)
    i = k - 1 - np.argmax(least[:, ::-1], axis=1)  # the last of the least: the widest grid
    return d[every, i], o[every, i]


def _fill_costs(costs: np.ndarray, r: np.ndarray, kk: np.ndarray, counts, mids, d, inv, i0, i1,
                clipping) -> None:
    """costs[r, kk] = d^2 * rounding noise + clipping of those (row, candidate) pairs, the
    rounding noise summed over the kept bins [i0, i1) of the row."""
    step = max(1, _CHUNK_ELEMENTS // mids.shape[1])
    j = np.arange(mids.shape[1])[None, :]
    for part in range(0, r.size, step):
        pr, pk = r[part:part + step], kk[part:part + step]
        u = mids[pr] * inv[pr, pk][:, None]  # m / d
        q = np.rint(u)
        clipped = (j < i0[pr, pk][:, None]) | (j >= i1[pr, pk][:, None])
        q -= u
        q *= q
        q[clipped] = 0.0
        dd = d[pr, pk]
        costs[pr, pk] = dd * dd * np.einsum("pn,pn->p", q, counts[pr]) + clipping[pr, pk]


def _search(occ: _Occupied, bitwidth: int, symmetric: bool, strict_symmetric: bool,
            min_range: float, gamma: float):
    bw = check_bitwidth(bitwidth)
    strict = bool(symmetric) and bool(strict_symmetric)
    steps = num_steps(bw, strict)
    lo = np.minimum(occ.lo, 0.0)
    hi = np.maximum(occ.hi, 0.0)
    hi = np.maximum(hi, lo + min_range)
    hi = np.maximum(hi, lo + steps * minimum_scale(steps))
    deltas, offsets = _candidates(lo, hi, steps, bool(symmetric))
    d, o = _best(occ, deltas, offsets, steps, gamma)
    return bw, steps, d, o


def tf_enhanced_encoding(hist, bin_edges, bitwidth: int, symmetric: bool, *,
                         strict_symmetric: bool = False, axis: int | None = None,
                         min_range: float = AIMET_MIN_RANGE, gamma: float = GAMMA) -> Encoding:
    """The TF-enhanced encoding itself: the best candidate's delta and offset.

    Per-channel histograms give a per-channel encoding (pass the tensor's ``axis``).
    """
    h, e, single = _as_2d(hist, bin_edges)
    return _encoding(_of_edges(h, e), single, bitwidth, symmetric, strict_symmetric, axis, min_range, gamma)


def tf_enhanced_encoding_of_bins(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, bitwidth: int,
                                 symmetric: bool, *, single: bool, strict_symmetric: bool = False,
                                 axis: int | None = None, min_range: float = AIMET_MIN_RANGE,
                                 gamma: float = GAMMA) -> Encoding:
    """:func:`tf_enhanced_encoding` of (C, B) ``counts`` of equal bins over [lo, hi] per row, as a
    histogram observer keeps them (valid by construction: not checked), without the (C, B + 1)
    edges; the same numbers. ``single``: one row, a per-tensor encoding."""
    occ = _of_range(np.asarray(counts), np.asarray(lo, np.float64), np.asarray(hi, np.float64))
    return _encoding(occ, single, bitwidth, symmetric, strict_symmetric, axis, min_range, gamma)


def _encoding(occ: _Occupied, single: bool, bitwidth: int, symmetric: bool, strict_symmetric: bool,
              axis: int | None, min_range: float, gamma: float) -> Encoding:
    bw, _, d, o = _search(occ, bitwidth, symmetric, strict_symmetric, min_range, gamma)
    scale = d.astype(np.float32)
    offset = o.astype(np.int64)
    if single:
        return Encoding(bw, bool(symmetric), scale[0], offset[0])
    return Encoding(bw, bool(symmetric), scale, offset, axis=axis)


def tf_enhanced_range(hist, bin_edges, bitwidth: int, symmetric: bool, *,
                      strict_symmetric: bool = False, min_range: float = AIMET_MIN_RANGE,
                      gamma: float = GAMMA):
    """(min, max) of the TF-enhanced grid: (d o, d (o + N)), floats or per-channel arrays.

    To build the encoding use :func:`tf_enhanced_encoding` (no float round trip); feeding
    this range back through ``encoding_from_range`` gives the same delta, up to float
    rounding, since the symmetric formula divides -min by the negative step count.
    """
    h, e, single = _as_2d(hist, bin_edges)
    _, steps, d, o = _search(_of_edges(h, e), bitwidth, symmetric, strict_symmetric, min_range, gamma)
    lo, hi = d * o, d * (o + steps)
    if single:
        return float(lo[0]), float(hi[0])
    return lo, hi


def percentile_range(hist, bin_edges, percentile: float):
    """(min, max) after clipping (100 - percentile)% of the counts on each side (AIMET).

    ``percentile`` in [50, 100]. Floats for a 1-D histogram, arrays for (C, B).
    """
    p = float(percentile)
    if not 50.0 <= p <= 100.0:
        raise ValueError(f"percentile must be within 50..100, got {percentile}")
    h, e, single = _as_2d(hist, bin_edges)
    if p == 100.0:
        occ = _of_edges(h, e)
        lo, hi = occ.lo, occ.hi
    else:
        cdf = np.cumsum(h, axis=1)
        total = cdf[:, -1]
        rows = np.arange(h.shape[0])
        lo_idx = np.array([np.searchsorted(cdf[r], total[r] * (100.0 - p) / 100.0, side="left") for r in rows])
        hi_idx = np.array([np.searchsorted(cdf[r], total[r] * p / 100.0, side="left") for r in rows])
        lo = e[rows, np.minimum(lo_idx, h.shape[1] - 1)]
        hi = e[rows, np.minimum(hi_idx, h.shape[1] - 1)]
        width = e[rows, 1] - e[rows, 0]
        hi = np.where(hi <= lo, lo + width, hi)
    if single:
        return float(lo[0]), float(hi[0])
    return lo, hi
