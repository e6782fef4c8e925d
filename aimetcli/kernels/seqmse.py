"""Sequential MSE weight ranges (AIMET's SeqMSE) on second moments (numpy only).

For one layer with weight W (as [g, m, d]: g groups, m output channels a group, d = input
channels of a group x kernel taps) and the second moments of its input patches over all output
positions, the grid of each output channel (or of the whole tensor) is chosen among AIMET's
candidates: the min-max grid's range [min, max] scaled by (k + 1) / K, k = 0 .. K - 1 (K = 20),
each made a grid by :func:`aimetcli.kernels.quant.encoding_from_range` (so a symmetric
candidate's scale is the min-max scale times (k + 1) / K, and the last candidate is the min-max
grid itself). The chosen candidate is the one whose quantized weights W~_k reproduce the
layer's output best:

    symqt (AIMET's default: input and target both from the quantized model)
        L_c(k) = (W~_k - W)_c G (W~_k - W)_c^T,             G = sum x x^T
    asym  (input from the quantized model, target from FP32)
        L_c(k) = W~_c G W~_c^T - 2 W~_c C W_c^T (+ const),  C = sum x f^T

(x: the layer's input patch in the model quantized up to it, f: the FP32 one; sums over samples
and output positions), which is the squared output error summed over positions, so each
candidate costs O(m d^2) whatever the number of positions. A per-tensor grid sums L over its
channels. Ties go to the wider range (the min-max grid first): a layer whose input is all zeros
keeps min-max, where AIMET's first-minimum rule would take the narrowest candidate.
"""

from __future__ import annotations

import numpy as np

from aimetcli.kernels.quant import Encoding, encoding_from_range, fake_quantize

CANDIDATES = 20


def candidate_grids(base: Encoding, candidates: int = CANDIDATES) -> list[Encoding]:
    """AIMET's candidates: ``base``'s range [min, max] (per channel where per-channel) times
    (k + 1) / K, each through :func:`encoding_from_range` with ``base``'s bitwidth and symmetry."""
    lo, hi = base.min, base.max
    axis = base.axis if base.per_channel else None
    return [encoding_from_range(lo * (k + 1) / candidates, hi * (k + 1) / candidates, base.bitwidth, base.symmetric,
                                strict_symmetric=base.strict_symmetric, axis=axis)
            for k in range(candidates)]


def output_errors(w: np.ndarray, wq: np.ndarray, gram: np.ndarray, cross: np.ndarray | None = None) -> np.ndarray:
    """[g, m] the output error of each output channel with weights ``wq`` for ``w`` (both
    [g, m, d]), from G (and C for asym; module docstring), [g, d, d]."""
    w = np.asarray(w, np.float64)
    wq = np.asarray(wq, np.float64)
    if cross is None:
        e = wq - w
        return np.einsum("gmd,gde,gme->gm", e, gram, e)
    return np.einsum("gmd,gde,gme->gm", wq, gram, wq) - 2 * np.einsum("gmd,gde,gme->gm", wq, cross, w)


def choose(losses: np.ndarray, per_channel: bool) -> np.ndarray:
    """The chosen candidate per channel (per-tensor: one, repeated) from ``losses`` [K, C];
    ties go to the larger candidate."""
    k = losses.shape[0]
    if per_channel:
        return k - 1 - np.argmin(losses[::-1], axis=0)
    return np.full(losses.shape[1], k - 1 - int(np.argmin(losses.sum(axis=1)[::-1])))


def assemble(grids: list[Encoding], chosen: np.ndarray) -> Encoding:
    """The encoding that takes channel c's scale and offset from candidate ``chosen[c]``."""
    first = grids[int(chosen[0])]
    if not first.per_channel:
        return first
    c = np.arange(chosen.size)
    scale = np.stack([e.scale for e in grids])[chosen, c]
    offset = np.stack([e.offset for e in grids])[chosen, c]
    return Encoding(first.bitwidth, first.symmetric, scale, offset, axis=first.axis)


def best_encoding(w: np.ndarray, gram: np.ndarray, base: Encoding, *, cross: np.ndarray | None = None,
                  candidates: int = CANDIDATES) -> tuple[Encoding, np.ndarray]:
    """(chosen encoding, losses [K, m]) for a plain [m, d] matrix ``w`` whose rows are the
    channels of ``base`` (axis 0 when per-channel), with moments [d, d]."""
    w = np.asarray(w, np.float32)
    grids = candidate_grids(base, candidates)
    g3 = np.asarray(gram, np.float64)[None]
    c3 = None if cross is None else np.asarray(cross, np.float64)[None]
    losses = np.stack([output_errors(w[None], fake_quantize(w, e)[None], g3, c3)[0] for e in grids])
    return assemble(grids, choose(losses, base.per_channel)), losses

