"""Streaming observers: min/max and merged histograms, per tensor and per channel."""

from __future__ import annotations

import numpy as np
import pytest

from aimetcli.calibration.observers import (
    EmptyObserverError,
    HistogramObserver,
    MinMaxObserver,
    make_observer,
    observe_encoding,
)
from aimetcli.kernels.quant import QuantScheme, encoding_from_range
from aimetcli.kernels.range_search import percentile_range, tf_enhanced_encoding, tf_enhanced_range

RNG = np.random.default_rng(0)


def test_minmax_streams_and_skips_nonfinite():
    obs = MinMaxObserver()
    obs.update(np.array([1.0, -2.0, 3.0], np.float32))
    obs.update(np.array([[np.nan, 7.5], [np.inf, -np.inf]], np.float32))
    obs.update(np.array([], np.float32))
    obs.update(np.array([0.5, -3.25]))
    assert obs.result() == (-3.25, 7.5)
    assert obs.nonfinite_count == 3


def test_minmax_per_channel():
    x = RNG.normal(size=(4, 3, 5)).astype(np.float32)
    y = RNG.normal(size=(2, 3, 5)).astype(np.float32) * 3
    obs = MinMaxObserver(axis=1)
    obs.update(x)
    obs.update(y)
    both = np.concatenate([x, y])
    lo, hi = obs.result()
    assert np.array_equal(lo, both.min(axis=(0, 2))) and np.array_equal(hi, both.max(axis=(0, 2)))
    neg = MinMaxObserver(axis=-2)
    neg.update(x)
    assert np.array_equal(neg.result()[0], x.min(axis=(0, 2)))
    with pytest.raises(ValueError, match="channels"):
        obs.update(np.zeros((2, 4, 5), np.float32))


def test_minmax_empty_raises():
    obs = MinMaxObserver()
    with pytest.raises(EmptyObserverError):
        obs.result()
    obs.update(np.full(4, np.nan, np.float32))
    assert obs.nonfinite_count == 4
    with pytest.raises(EmptyObserverError):
        obs.result()
    pc = MinMaxObserver(axis=0)
    pc.update(np.array([[1.0, 2.0], [np.nan, np.nan]]))
    with pytest.raises(EmptyObserverError, match="channels"):
        pc.result()
    pc.update(np.array([[0.0], [5.0]]))
    assert [a.tolist() for a in pc.result()] == [[0.0, 5.0], [2.0, 5.0]]


def test_histogram_single_batch_matches_numpy():
    x = RNG.normal(size=100_000).astype(np.float32)
    obs = HistogramObserver()
    obs.update(x)
    counts, edges = obs.histogram()
    ref_counts, ref_edges = np.histogram(x.astype(np.float64), bins=512)
    assert counts.shape == (512,) and edges.shape == (513,)
    assert np.allclose(edges, ref_edges, rtol=0, atol=1e-12)
    assert np.abs(counts - ref_counts).sum() <= 4  # values on bin edges may round either way
    assert counts.sum() == x.size and obs.minmax() == (float(x.min()), float(x.max()))


def test_histogram_merging_preserves_counts_and_tf_enhanced_result():
    batches = [RNG.normal(0.0, s, 40_000).astype(np.float32) for s in (0.2, 0.5, 1.0, 2.0, 4.0)]
    batches[2][:3] = [np.nan, np.inf, -np.inf]
    batches[4][0] = 40.0  # a late outlier grows the range a lot
    obs = HistogramObserver()
    for b in batches:
        obs.update(b)
    data = np.concatenate(batches)
    finite = data[np.isfinite(data)]
    counts, edges = obs.histogram()
    assert counts.dtype == np.int64 and counts.sum() == finite.size == obs.total_count
    assert obs.nonfinite_count == 3
    assert edges[0] == finite.min() and edges[-1] == finite.max()

    single = HistogramObserver()
    single.update(finite)
    s_counts, s_edges = single.histogram()
    assert np.allclose(s_edges, edges)
    for sym in (False, True):
        merged = tf_enhanced_range(counts, edges, 8, sym)
        direct = tf_enhanced_range(s_counts, s_edges, 8, sym)
        span = direct[1] - direct[0]
        assert abs(merged[0] - direct[0]) < 0.05 * span and abs(merged[1] - direct[1]) < 0.05 * span
    assert np.allclose(percentile_range(counts, edges, 99.9), percentile_range(s_counts, s_edges, 99.9),
                       atol=3 * (edges[1] - edges[0]))


def test_histogram_growing_both_ways_keeps_mass_where_it_was():
    obs = HistogramObserver(num_bins=64)
    obs.update(np.linspace(-1.0, 1.0, 6400))
    obs.update(np.array([-3.0, 5.0]))
    counts, edges = obs.histogram()
    assert counts.sum() == 6402 and edges[0] == -3.0 and edges[-1] == 5.0
    mids = (edges[:-1] + edges[1:]) / 2
    inside = (mids > -1.2) & (mids < 1.2)
    assert counts[inside].sum() == 6400


def test_histogram_constant_data():
    obs = HistogramObserver()
    obs.update(np.full(1000, 2.5, np.float32))
    counts, edges = obs.histogram()
    assert counts.sum() == 1000 and edges[0] == 2.0 and edges[-1] == 3.0
    assert obs.minmax() == (2.5, 2.5)
    enc = observe_encoding(obs, QuantScheme.TF_ENHANCED, 8, False)
    assert float(enc.max) >= 2.5 - float(enc.scale) and float(enc.min) == 0.0


def test_histogram_per_channel_equals_separate_observers():
    x1 = RNG.normal(size=(8, 3, 10)) * np.array([0.1, 1.0, 5.0])[None, :, None]
    x2 = RNG.normal(size=(8, 3, 10)) * np.array([0.5, 0.2, 9.0])[None, :, None]
    x2[0, 0, 0] = np.nan
    pc = HistogramObserver(num_bins=128, axis=1)
    for x in (x1, x2):
        pc.update(x)
    counts, edges = pc.histogram()
    assert counts.shape == (3, 128) and edges.shape == (3, 129)
    for c in range(3):
        one = HistogramObserver(num_bins=128)
        one.update(x1[:, c])
        one.update(x2[:, c])
        c_counts, c_edges = one.histogram()
        assert np.array_equal(counts[c], c_counts) and np.allclose(edges[c], c_edges)
    lo, hi = pc.minmax()
    assert lo.shape == (3,) and pc.nonfinite_count == 1


def test_tf_enhanced_from_the_observers_bins_is_the_search_over_its_histogram():
    """observe_encoding searches the observer's bins without building their edges
    (range_search.tf_enhanced_encoding_of_bins): per channel, channels of few values (few
    non-empty bins, searched a group at a time) and of many (row by row), the same grid as
    tf_enhanced_encoding of the histogram, whatever the bitwidth and symmetry."""
    w = RNG.normal(size=(48, 400)).astype(np.float32) * RNG.uniform(0.01, 3.0, size=(48, 1)).astype(np.float32)
    w[:24, 9:] = 0.0  # half the channels: 9 values and zeros (few non-empty bins)
    w[3, :9] = 0.5  # a channel of one value
    obs = make_observer(QuantScheme.TF_ENHANCED, axis=0)
    obs.update(w)
    counts, edges = obs.histogram()
    for bw, sym in ((8, True), (8, False), (4, True), (3, False)):
        assert observe_encoding(obs, QuantScheme.TF_ENHANCED, bw, sym) == tf_enhanced_encoding(counts, edges, bw, sym,
                                                                                               axis=0)


def test_observe_encoding_per_scheme():
    x = np.concatenate([RNG.normal(size=50_000), [30.0]]).astype(np.float32)
    mm = make_observer(QuantScheme.MIN_MAX)
    hist = make_observer(QuantScheme.TF_ENHANCED)
    assert isinstance(mm, MinMaxObserver) and isinstance(hist, HistogramObserver)
    assert isinstance(make_observer("percentile"), HistogramObserver)
    for obs in (mm, hist):
        obs.update(x)
    expected = encoding_from_range(float(x.min()), float(x.max()), 8, False)
    assert observe_encoding(mm, QuantScheme.MIN_MAX, 8, False) == expected
    assert observe_encoding(hist, QuantScheme.MIN_MAX, 8, False) == expected
    counts, edges = hist.histogram()
    assert observe_encoding(hist, QuantScheme.TF_ENHANCED, 8, True) == tf_enhanced_encoding(counts, edges, 8, True)
    pct = observe_encoding(hist, QuantScheme.PERCENTILE, 8, False, percentile=99.9)
    assert pct == encoding_from_range(*percentile_range(counts, edges, 99.9), 8, False, min_range=0.0)
    assert float(pct.max) < 10.0
    strict = observe_encoding(mm, QuantScheme.MIN_MAX, 8, True, strict_symmetric=True)
    assert strict.strict_symmetric
    with pytest.raises(TypeError, match="HistogramObserver"):
        observe_encoding(mm, QuantScheme.TF_ENHANCED, 8, False)
    with pytest.raises(EmptyObserverError):
        observe_encoding(HistogramObserver(), QuantScheme.TF_ENHANCED, 8, False)


def test_observe_encoding_per_channel_weights():
    w = RNG.normal(size=(6, 4, 3, 3)).astype(np.float32) * np.arange(1, 7)[:, None, None, None]
    for scheme in QuantScheme:
        obs = make_observer(scheme, axis=0)
        obs.update(w)
        enc = observe_encoding(obs, scheme, 8, True)
        assert enc.per_channel and enc.axis == 0 and enc.num_channels == 6
        for c in range(6):
            one = make_observer(scheme)
            one.update(w[c])
            single = observe_encoding(one, scheme, 8, True)
            assert enc.scale[c] == single.scale and enc.offset[c] == single.offset


@pytest.mark.parametrize("axis", [None, 1])
def test_histogram_bins_equal_the_formula_with_ties_and_maxima(axis):
    """Counts equal floor((x - lo) * B / (hi - lo)) clipped to B-1, computed directly in float32:
    Relu-like data (a run of zeros), every channel's maximum repeated (the last bin), several
    channels and more values than one chunk (the binning's lanes and chunks must add up exactly)."""
    b = 512
    x = np.maximum(RNG.normal(size=(40, 3, 1200)), 0.0).astype(np.float32) * np.array([1, 7, 0.01],
                                                                                     np.float32)[None, :, None]
    x[:, :, :200] = 0.0
    x[5, :, 7] = x.max(axis=(0, 2))
    obs = HistogramObserver(axis=axis)
    obs.update(x)
    counts, _ = obs.histogram()
    rows = [x.reshape(-1)] if axis is None else [x[:, c].reshape(-1) for c in range(3)]
    expected = []
    for r in rows:
        lo, hi = float(r.min()), float(r.max())
        t = (r - np.float32(lo)) * np.float32(b / (hi - lo))
        expected.append(np.bincount(np.minimum(t.astype(np.int64), b - 1), minlength=b))
    assert np.array_equal(counts.reshape(len(rows), b), np.array(expected))


def test_per_channel_histograms_of_many_short_channels_equal_the_formula():
    """Weights per output channel: many channels of a few values each are binned in blocks of
    channels; every channel's counts still equal the formula on its own values."""
    b = 512
    w = RNG.normal(size=(300, 7, 3, 3)).astype(np.float32) * RNG.uniform(0.1, 5, (300, 1, 1, 1)).astype(np.float32)
    w[17] = 0.25  # a constant channel (its range is widened by 1/2 each side)
    obs = HistogramObserver(axis=0)
    obs.update(w)
    counts, edges = obs.histogram()
    for ch in (0, 17, 150, 299):
        r = w[ch].reshape(-1)
        lo, hi = edges[ch, 0], edges[ch, -1]
        t = (r - np.float32(lo)) * np.float32(b / (hi - lo))
        expected = np.bincount(np.minimum(t.astype(np.int64), b - 1), minlength=b)
        assert np.array_equal(counts[ch], expected), ch
    assert counts.sum() == w.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_tensor_histogram_over_many_blocks_equals_the_formula(dtype):
    """Per tensor, values are counted in _LANES interleaved histograms, block by block: a batch of
    several blocks with runs of zeros, repeated maxima and NaN/Inf (skipped and counted) gives
    the formula's counts on its finite values."""
    import aimetcli.calibration.observers as observers

    b = 512
    x = (RNG.normal(size=(2, 3 * observers._CHUNK + 5)) * 3.0).astype(dtype)
    x[1, :700] = 0.0
    x[0, 9] = x[0, 10] = x.max()
    x[0, 3], x[1, 4000], x[1, 17] = np.nan, np.inf, -np.inf
    obs = HistogramObserver()
    obs.update(x)
    counts, edges = obs.histogram()
    finite = x[np.isfinite(x)].astype(dtype)
    lo, hi = finite.min(), finite.max()
    work = np.float32 if dtype == np.float32 else np.float64
    t = (finite - work(lo)) * work(b / (float(hi) - float(lo)))
    expected = np.bincount(np.minimum(t.astype(np.int64), b - 1), minlength=b)
    assert np.array_equal(counts.reshape(-1), expected)
    assert obs.nonfinite_count == 3 and counts.sum() == x.size - 3


def test_fixed_range_histogram_is_the_histogram_over_that_range_in_any_batches():
    """With its range given (the reductions' min and max), a histogram never re-bins: the same
    counts whatever the batches and their order, np.histogram's over that range (but values on bin
    edges); values past the range count in the end bins, non-finite ones are skipped and counted."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=60_000) * np.repeat(np.linspace(0.2, 3.0, 6), 10_000)  # later batches reach further
    lo, hi = float(x.min()), float(x.max())

    def fed(parts, dtype=np.float64):
        obs = HistogramObserver(value_range=(lo, hi))
        for part in parts:
            obs.update(part.astype(dtype))
        return obs

    one = fed([x])
    counts, edges = one.histogram()
    ref_counts, ref_edges = np.histogram(x, bins=512, range=(lo, hi))
    np.testing.assert_allclose(edges, ref_edges, rtol=0, atol=1e-12)
    assert np.abs(counts - ref_counts).sum() <= 4 and counts.sum() == x.size
    for parts in (np.array_split(x, 60), np.array_split(x[::-1], 7)):
        np.testing.assert_array_equal(fed(parts).histogram()[0], counts)
    grown = HistogramObserver()
    for part in np.array_split(x, 60):
        grown.update(part)
    assert not np.array_equal(grown.histogram()[0], counts)  # AIMET's growing histogram re-bins approximately
    f32 = fed(np.array_split(x, 5), np.float32)
    assert np.abs(f32.histogram()[0] - counts).sum() <= 8 and f32.minmax() == (float(np.float32(lo)), float(np.float32(hi)))
    past = HistogramObserver(value_range=(-1.0, 1.0))
    past.update(np.array([-3.0, -1.0, 0.0, 1.0, 2.5, np.nan, np.inf]))
    c, _ = past.histogram()
    assert (c[0], c[256], c[-1], c.sum(), past.nonfinite_count) == (2, 1, 2, 5, 2)
    assert past.minmax() == (-3.0, 2.5)
    const = HistogramObserver(value_range=(2.0, 2.0))
    const.update(np.full(4, 2.0))
    assert const.histogram()[1][[0, -1]].tolist() == [1.5, 2.5]
