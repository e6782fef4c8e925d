"""Bias-correction math (numpy only). Nagel et al. 2019, section 4.2.

A layer y = W x + b run with quantized weights W~ = W + e has the expected output
error E[e x] = e E[x]; subtracting it from the bias removes the shift:
    b <- b - sum over input channels c and kernel taps k of e[o, c, k] E[x_c]

Analytical E[x]: when x = act(z) with z ~ N(beta, gamma^2) the pre-activation of a
folded BatchNorm (per channel), then with alpha = (a - beta)/gamma, beta' = (b - beta)/gamma,
phi/Phi the standard normal pdf/cdf,
  identity          E[x] = beta
  ReLU              E[x] = beta (1 - Phi(-beta/gamma)) + gamma phi(-beta/gamma)
  clip to [a, b]    E[x] = gamma (phi(alpha) - phi(beta')) + beta (Phi(beta') - Phi(alpha))
                           + a Phi(alpha) + b (1 - Phi(beta'))
(ReLU is the clip to [0, inf); ReLU6 the clip to [0, 6]).

Empirical: per output channel, mean over every position of the channel (all rows
of axis 0, which are samples or, after a reshape such as [T, N, H] -> [T*N, H],
T rows a sample, and all spatial positions) of the FP32 layer output minus that
of the quantized model's; added to the bias.
"""

from __future__ import annotations

import math

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)

METHODS = ("empirical", "analytical", "hybrid")


def norm_cdf(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def norm_pdf(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def clipped_normal_mean(beta, gamma, lo: float = -math.inf, hi: float = math.inf) -> np.ndarray:
    """E[clip(z, lo, hi)] for z ~ N(beta, gamma^2), per channel (gamma = 0 -> clip(beta))."""
    beta = np.asarray(beta, np.float64)
    gamma = np.abs(np.asarray(gamma, np.float64))
    out = np.clip(beta, lo, hi).astype(np.float64)
    ok = gamma > 0
    if not np.any(ok):
        return out
    b, g = beta[ok], gamma[ok]
    mean = b.copy()
    if math.isfinite(lo):
        alpha = (lo - b) / g
        cdf_a, pdf_a = norm_cdf(alpha), norm_pdf(alpha)
    else:
        cdf_a, pdf_a = np.zeros_like(b), np.zeros_like(b)
    if math.isfinite(hi):
        bp = (hi - b) / g
        cdf_b, pdf_b = norm_cdf(bp), norm_pdf(bp)
    else:
        cdf_b, pdf_b = np.ones_like(b), np.zeros_like(b)
    mean = g * (pdf_a - pdf_b) + b * (cdf_b - cdf_a)
    if math.isfinite(lo):
        mean = mean + lo * cdf_a
    if math.isfinite(hi):
        mean = mean + hi * (1.0 - cdf_b)
    out[ok] = mean
    return out


class ChannelMean:
    """Streaming per-channel mean over every axis but the channel axis: 1 (N, C, spatial...), or
    the last with ``channels_last`` (..., C)."""

    def __init__(self, channels_last: bool = False) -> None:
        self.total: np.ndarray | None = None
        self.count = 0
        self.channels_last = channels_last

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.ndim < 2:
            return
        if self.channels_last:
            x = x.reshape(-1, x.shape[-1], 1)
        if x.dtype == np.float32 and x.flags.c_contiguous:
            # float32 pairwise sums along the contiguous spatial axis (accurate to a few ulp,
            # no float64 copy of the tensor), then float64 across the batch
            s = x.reshape(x.shape[0], x.shape[1], -1).sum(axis=2).sum(axis=0, dtype=np.float64)
        else:
            s = x.sum(axis=tuple(i for i in range(x.ndim) if i != 1), dtype=np.float64)
        self.total = s if self.total is None else self.total + s
        self.count += x.size // x.shape[1]

    @property
    def mean(self) -> np.ndarray:
        if self.total is None or self.count == 0:
            raise ValueError("no data observed")
        return self.total / self.count
