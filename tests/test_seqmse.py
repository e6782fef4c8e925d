"""SeqMSE's candidate losses on second moments against the layer's output error on the samples."""

from __future__ import annotations

import numpy as np
import pytest

from aimetcli.kernels.quant import encoding_from_range, fake_quantize
from aimetcli.kernels.seqmse import CANDIDATES, best_ranges, candidate_losses


def _layer(seed=0, m=6, d=10, n=400):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(m, d)) * rng.uniform(0.2, 2.0, size=(m, 1))
    w[0, 0] = 8.0  # an outlier on an input that hardly varies: clipping it pays at 4 bits
    x = rng.normal(size=(n, d))
    x[:, 0] *= 0.02
    f = x + 0.05 * rng.normal(size=(n, d))  # the FP32 patches; x: the quantized model's
    return w, x, f


@pytest.mark.parametrize("per_channel", [True, False])
def test_symqt_losses_are_the_output_error_on_the_samples(per_channel):
    w, x, _ = _layer()
    ranges, losses = candidate_losses(w, x.T @ x, 4, per_channel=per_channel)
    assert ranges.shape == losses.shape == (CANDIDATES, w.shape[0])
    for k in (0, 7, CANDIDATES - 1):
        top = ranges[k]
        enc = (encoding_from_range(-top, top, 4, True, axis=0) if per_channel
               else encoding_from_range(-float(top[0]), float(top[0]), 4, True))
        wq = fake_quantize(w.astype(np.float32), enc).astype(np.float64)
        direct = (((wq - w) @ x.T) ** 2).sum(axis=1)
        np.testing.assert_allclose(losses[k], direct, rtol=1e-9)


def test_asym_losses_differ_from_the_sample_error_by_a_constant_per_channel():
    w, x, f = _layer(seed=1)
    _, losses = candidate_losses(w, x.T @ x, 4, c=x.T @ f)
    for k in range(CANDIDATES):
        top = np.abs(w).max(axis=1) * (k + 1) / CANDIDATES
        wq = fake_quantize(w.astype(np.float32), encoding_from_range(-top, top, 4, True, axis=0)).astype(np.float64)
        direct = ((wq @ x.T - w @ f.T) ** 2).sum(axis=1)
        np.testing.assert_allclose(losses[k] + ((w @ f.T) ** 2).sum(axis=1), direct, rtol=1e-9)


def test_the_chosen_range_is_never_worse_than_min_max_and_clips_the_outlier_channel():
    w, x, _ = _layer(seed=2)
    g = x.T @ x
    _, losses = candidate_losses(w, g, 4)
    best = best_ranges(w, g, 4)
    chosen = np.array([losses[np.argmin(losses[:, c]), c] for c in range(w.shape[0])])
    assert np.all(chosen <= losses[-1])  # the last candidate is the min-max range
    assert best[0] < np.abs(w[0]).max()  # the outlier's channel is clipped
