"""Sequential MSE weight ranges (AIMET's SeqMSE) on second moments (numpy only).

For one layer (group) with weight W [m, d] and the second moments of its input patches over all
output positions, the clipping range of each output channel (or of the whole tensor) is chosen
among AIMET's candidates

    max_k = max|W_c| * (k + 1) / K,   k = 0 .. K - 1   (K = 20)

as the one whose quantized weights W~_k = fake_quantize(W, grid of [-max_k, max_k]) reproduce
the layer's output best:

    symqt (AIMET's default 'symqt': input and target both from the quantized model)
        L_c(k) = (W~_k - W)_c G (W~_k - W)_c^T,             G = sum x x^T
    asym  (input from the quantized model, target from FP32)
        L_c(k) = W~_c G W~_c^T - 2 W~_c C W_c^T (+ const),  C = sum x f^T

Each candidate costs O(m d^2) whatever the number of positions. Per-tensor grids sum L over the
channels. The grid of a range is :func:`aimetcli.kernels.quant.encoding_from_range`'s, so the
chosen range gives the same grid quantsim would compute from it.
"""

from __future__ import annotations

import numpy as np

from aimetcli.kernels.quant import encoding_from_range, fake_quantize

CANDIDATES = 20


def candidate_losses(w: np.ndarray, g: np.ndarray, bitwidth: int, *, symmetric: bool = True,
                     per_channel: bool = True, c: np.ndarray | None = None,
                     candidates: int = CANDIDATES) -> tuple[np.ndarray, np.ndarray]:
    """(ranges [K, m], losses [K, m]): each candidate's clipping max per output channel and the
    layer-output error it gives (module docstring; ``c`` None: symqt, else asym). Per-tensor
    candidates scale the whole tensor's max|W| (every row of a candidate the same)."""
    w = np.asarray(w, np.float64)
    m = w.shape[0]
    absmax = np.abs(w).max(axis=1) if per_channel else np.full(m, np.abs(w).max())
    absmax = np.maximum(absmax, np.finfo(np.float32).tiny)
    ranges = np.empty((candidates, m))
    losses = np.empty((candidates, m))
    w32 = w.astype(np.float32)
    for k in range(candidates):
        top = absmax * (k + 1) / candidates
        ranges[k] = top
        if per_channel:
            enc = encoding_from_range(-top, top, bitwidth, symmetric, axis=0)
        else:
            enc = encoding_from_range(-float(top[0]), float(top[0]), bitwidth, symmetric)
        wq = fake_quantize(w32, enc).astype(np.float64)
        if c is None:
            e = wq - w
            losses[k] = np.einsum("ij,jk,ik->i", e, g, e)
        else:
            losses[k] = np.einsum("ij,jk,ik->i", wq, g, wq) - 2 * np.einsum("ij,jk,ik->i", wq, c, w)
    return ranges, losses


def best_ranges(w: np.ndarray, g: np.ndarray, bitwidth: int, *, symmetric: bool = True, per_channel: bool = True,
                c: np.ndarray | None = None, candidates: int = CANDIDATES) -> np.ndarray:
    """The chosen clipping max per output channel (per-tensor: one value, repeated per row)."""
    ranges, losses = candidate_losses(w, g, bitwidth, symmetric=symmetric, per_channel=per_channel, c=c,
                                      candidates=candidates)
    if per_channel:
        k = np.argmin(losses, axis=0)
        return ranges[k, np.arange(ranges.shape[1])]
    k = int(np.argmin(losses.sum(axis=1)))
    return ranges[k]
