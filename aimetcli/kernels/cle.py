"""Cross-layer scaling and high-bias absorption math (numpy only).

Nagel et al. 2019, section 4.1. For consecutive layers y = f(W2 f(W1 x + b1) + b2)
with f commuting with positive scaling (ReLU, PReLU, LeakyReLU, identity):
    f(W1 x + b1) = S f(S^-1 W1 x + S^-1 b1),   S = diag(s), s > 0
so dividing layer 1's output channel i (weights and bias) by s_i and multiplying
layer 2's input channel i by s_i leaves the function unchanged.

Two layers: with r1_i the range (max |w|) of layer 1's output channel i and r2_i
that of layer 2's input channel i,  s_i = sqrt(r1_i / r2_i);  afterwards both
ranges equal sqrt(r1_i r2_i).

Three layers (conv, depthwise conv, conv), with r2 the depthwise per-channel range:
    c_i = cbrt(r1_i r2_i r3_i),  s12_i = r1_i / c_i,  s23_i = c_i / r3_i
and all three ranges become c_i.

Channels where a range is zero (dead channels) keep s = 1: dividing by zero would
make the other layer's weights infinite.

High-bias absorption: if layer 1's pre-activation output channel i is distributed
as N(beta_i, gamma_i^2) (the folded BN), then with c_i = max(0, beta_i - 3|gamma_i|)
almost all pre-activations exceed c_i, so ReLU(x - c) = ReLU(x) - c there and
    b1 <- b1 - c,    b2 <- b2 + W2 c   (W2 c summed over the kernel taps)
moves the bias out of layer 1's quantization range. With no activation between
the layers every c is exact; we use c = beta as AIMET does. Either way only when
layer 2 reads no zero padding (passes/high_bias_fold.py says where it is exact).
"""

from __future__ import annotations

import numpy as np


def _safe(r: np.ndarray) -> np.ndarray:
    return np.isfinite(r) & (r > 0)


def two_layer_scale(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    r1, r2 = np.asarray(r1, np.float64), np.asarray(r2, np.float64)
    s = np.ones_like(r1)
    ok = _safe(r1) & _safe(r2)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    return s


def three_layer_scale(r1: np.ndarray, r2: np.ndarray, r3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r1, r2, r3 = (np.asarray(r, np.float64) for r in (r1, r2, r3))
    s12, s23 = np.ones_like(r1), np.ones_like(r1)
    ok = _safe(r1) & _safe(r2) & _safe(r3)
    c = np.cbrt(r1[ok] * r2[ok] * r3[ok])
    s12[ok] = r1[ok] / c
    s23[ok] = c / r3[ok]
    return s12, s23


def absorbable_bias(beta: np.ndarray, gamma: np.ndarray, *, through_relu: bool) -> np.ndarray:
    beta = np.asarray(beta, np.float64)
    if not through_relu:
        return beta.copy()
    return np.maximum(0.0, beta - 3.0 * np.abs(np.asarray(gamma, np.float64)))


def range_spread(ranges: np.ndarray) -> float:
    """max/min of the non-zero per-channel ranges (1.0 when fewer than two)."""
    r = np.asarray(ranges, np.float64)
    r = r[_safe(r)]
    if r.size < 2:
        return 1.0
    return float(r.max() / r.min())
