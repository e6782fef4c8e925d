"""A layer's AdaRound problem (aimetcli/kernels/adaround.py): its weight, grid and the second
moments of its input patches, as G and C or as the patches themselves, and the loss they give.

G's rank is at most its positions (samples x output positions): below :func:`low_rank`'s bound,
the iteration multiplies by a factor B with G = B B^T (2 m d r multiply-adds instead of m d^2):
the patch rows themselves when the layer kept them, else G's eigenvectors (:func:`factor`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

@dataclass
class LayerProblem:
    """One layer's rounding problem: weight ``w`` [g, m, d] (g groups), its grid, its moments.

    ``scale``: [g, m, 1] (per output channel) or [1, 1, 1]; ``low``/``high`` (same shape): the
    grid's integers relative to zero, offset and offset + steps (W~ = scale * k, low <= k <= high).
    ``gram`` G, ``cross`` C: [g, d, d] sums over ``positions`` output positions; ``energy``:
    tr(W F W^T) = sum ||W f||^2, the loss's constant (only the reported losses need it).
    ``rows``: instead of G and C (None then), the patches themselves, X and F [g, positions, d]
    float32 (G = X^T X, C = X^T F), for a layer with fewer positions than :func:`low_rank` allows
    (a Gemm after a global pooling, a 3x3 conv on 7 x 7 maps): every product below then costs
    O(m d positions) instead of O(m d^2), and the layer holds 2 positions d floats, not 2 d^2.
    """

    w: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray
    gram: np.ndarray | None
    cross: np.ndarray | None
    energy: float
    positions: int
    rows: tuple[np.ndarray, np.ndarray] | None = None

    def gram_product(self, a: np.ndarray) -> np.ndarray:
        """a G for a [g, m, d]."""
        if self.rows is None:
            return a @ self.gram
        x = self.rows[0]
        return (a @ x.transpose(0, 2, 1)) @ x

    def cross_product(self, a: np.ndarray) -> np.ndarray:
        """a C for a [g, m, d]."""
        if self.rows is None:
            return a @ self.cross
        x, f = self.rows
        return (a @ x.transpose(0, 2, 1)) @ f

    def cross_t_product(self, a: np.ndarray) -> np.ndarray:
        """a C^T for a [g, m, d]."""
        if self.rows is None:
            return a @ self.cross.transpose(0, 2, 1)
        x, f = self.rows
        return (a @ f.transpose(0, 2, 1)) @ x

    def channel_energies(self, e: np.ndarray) -> np.ndarray:
        """[g, m]: e_r G e_r^T for each row r of e [g, m, d] (the output error energy of a weight error e)."""
        e = np.asarray(e, np.float64)
        return np.sum(self.gram_product(e) * e, axis=2)

    def quadratic(self, k: np.ndarray) -> float:
        """sum_pos ||W~ x||^2 - 2 <W~ x, W f> for W~ = scale * k (the loss but its constant), float64
        (the products as matrix products: m d^2 multiply-adds, where a three-operand einsum loops).
        It sums over output channels: a layer's is the sum of its row blocks'."""
        wq = self.scale.astype(np.float64) * k
        w = self.w.astype(np.float64)
        return float(np.vdot(self.gram_product(wq), wq)) - 2 * float(np.vdot(self.cross_product(wq), w))

    def loss_of(self, quadratic: float) -> float:
        """E_pos ||W~ x - W f||^2 from :meth:`quadratic`'s value."""
        return float(max(quadratic + self.energy, 0.0) / max(self.positions, 1))

    def loss(self, k: np.ndarray) -> float:
        """E_pos ||W~ x - W f||^2 (summed over output channels) for W~ = scale * k."""
        return self.loss_of(self.quadratic(k))

    def row_block(self, rows: slice) -> LayerProblem:
        """The problem of output channels ``rows`` of every group (the same moments): the loss is a
        sum over output channels, so the blocks' roundings are the layer's. Its ``energy`` is 0
        (the rows' share of the constant is not kept): compare its :meth:`quadratic` values."""
        return self._block(1, rows)

    def group_block(self, groups: slice) -> LayerProblem:
        """The problem of ``groups`` (a depthwise layer's channels, with their own moments): the
        loss is a sum over groups, as over output channels (:meth:`row_block`; ``energy`` 0 the same way)."""
        return self._block(0, groups)

    def _block(self, axis: int, part: slice) -> LayerProblem:
        """The weights ``part`` along ``axis`` (0 groups, 1 output channels) and their grids; the
        moments, per group, are cut along the groups only."""
        at = (slice(None),) * axis + (part,)

        def pick(a: np.ndarray) -> np.ndarray:  # a grid array: [g, m, 1], or [1, 1, 1] per tensor
            return a[at] if a.shape[axis] > 1 else a

        def moments(a: np.ndarray | None) -> np.ndarray | None:
            return a[part] if axis == 0 and a is not None else a

        rows = None if self.rows is None else (moments(self.rows[0]), moments(self.rows[1]))
        return LayerProblem(self.w[at], pick(self.scale), pick(self.low), pick(self.high), moments(self.gram),
                            moments(self.cross), 0.0, self.positions, rows)

    def halves(self) -> list[tuple[int, LayerProblem]]:
        """(axis, block) pairs that make the problem up, in order: two halves of its output
        channels, or of its groups where there is one channel a group, or the problem whole."""
        g, m, _ = self.w.shape
        if m >= 2:
            return [(1, self.row_block(slice(0, m // 2))), (1, self.row_block(slice(m // 2, m)))]
        if g >= 2:
            return [(0, self.group_block(slice(0, g // 2))), (0, self.group_block(slice(g // 2, g)))]
        return [(1, self)]

    def nearest(self) -> np.ndarray:
        """Integers of round-to-nearest (half to even, as QuantizeLinear) on the grid."""
        return np.clip(np.rint(self.w.astype(np.float64) / self.scale), self.low, self.high)


@dataclass
class LayerRounding:
    k: np.ndarray  # [g, m, d] int32 integers relative to zero: W~ = scale * k
    loss_nearest: float
    loss_adaround: float
    changed: int  # weights rounded the other way than to nearest


_RANK_TOL = 1e-10  # eigenvalues of G below this times the largest are float64 noise: G's rank is below them


_LOW_RANK = 0.4  # G's rank (at most its positions) below this fraction of d: tc B B^T beats tc G


def low_rank(d: int, positions: int) -> bool:
    """Whether a layer with ``positions`` output positions (all samples) and inputs of size d is
    better served by G's factor (2 m d r multiply-adds an iteration, r <= positions) than by G."""
    return d >= 64 and positions <= _LOW_RANK * d


def factor(gram: np.ndarray, m: int, positions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """G2 = B B^T (B: [g, d, r], G2's eigenvectors scaled by the square roots of its eigenvalues),
    where G2's rank r is low enough that tc B B^T (2 m d r multiply-adds) beats tc G2 (m d^2): G is
    a sum of x x^T over the positions, so its rank is at most their number, below d for a Gemm
    after a global pooling with fewer samples than input features (the full-size MobileNetV2's
    classifier: 256 samples, d = 1280). Exact but for the eigenvalues under _RANK_TOL times the
    largest (zero in exact arithmetic) and float32 rounding. None: the dense product, without
    eigh where the rank's bound (``positions``, :func:`rank_bound`) is already too high."""
    g, d, _ = gram.shape
    if not low_rank(d, min(positions, rank_bound(gram))):
        return None
    values, vectors = np.linalg.eigh(gram)
    keep = values > _RANK_TOL * max(float(values.max()), 0.0)
    rank = int(keep.sum(axis=1).max())
    if rank == 0 or not low_rank(d, rank):
        return None
    order = np.argsort(~keep, axis=1, kind="stable")[:, :rank]  # each group's kept components first
    b = np.take_along_axis(vectors * np.sqrt(np.where(keep, values, 0.0))[:, None, :], order[:, None, :], axis=2)
    b = b.astype(np.float32)
    return b, np.ascontiguousarray(b.transpose(0, 2, 1)), np.empty((g, m, rank), np.float32)


def rank_bound(gram: np.ndarray) -> int:
    """An upper bound of G's rank without its eigenvalues (eigh of a 256 x 256 G costs about as
    much as 500 iterations): the largest count of a group's nonzero diagonal entries (a zero
    diagonal entry of a sum of x x^T is a zero row and column)."""
    return int(np.count_nonzero(np.diagonal(gram, axis1=1, axis2=2), axis=1).max(initial=0))
