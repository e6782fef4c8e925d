"""AdaRound's reconstruction gradient on the moving weights alone, row by row (kernels/adaround.py).

Once most weights' rounding is final (their clipped t no longer changes), the gradient the Adam
step reads needs only the moving weights' share plus a constant: :class:`MovingRows`.
"""

from __future__ import annotations

import numpy as np


_ROWS_COST = 0.08  # a layer's products go row by row once that takes this fraction of the dense multiply-adds
_ROWS_BYTES = 128 << 20  # ... and its rows' blocks of G take at most this much
# ... or this much, made from G2's factor (the whole of them new memory: a dense layer's G is there already)
_FACTOR_ROWS_BYTES = 48 << 20
_ROWS_MIN_MACS = 1 << 18  # smaller layers stay dense (a few more numpy calls cost more than they save)
_ROWS_REBUILD = 0.8  # the blocks are gathered again once the moving weights drop below this fraction


class MovingRows:
    """A layer's reconstruction gradient on its moving weights alone, row by row.

    The gradient the Adam step reads at a moving weight (r, j) (row r = an output channel of a
    group) is y[r, j] = sum_k tc[r, k] G2[k, j] (times s_r^2 per channel). The frozen weights'
    tc never change (kernels/adaround.py `_Active`), so their share is a constant, computed once; the moving
    ones' is tc[r, M_r] G2[M_r, M_r] over the row's moving columns M_r. Per row that is a
    |M_r| x |M_r| block of G2 (gathered, zero-padded to the longest row; B[M_r] B[M_r]^T where the
    layer multiplies by G2's factor B [d, r]): sum_r |M_r|^2 instead of m d^2 (factor: 2 m d r)
    multiply-adds an iteration. Measured on the ResNet sample's 64 x 576 layer: 35% of
    the weights move after 4,000 of 15,000 iterations, 10% after 9,000 (the rows' longest then
    0.5 d and 0.15 d), so the rows cost about a fifth of the dense products over the whole run.
    The same sums in another order: float32 rounding differs from the dense product's.
    """

    def __init__(self, slot, tc: np.ndarray, moving: np.ndarray, width: int):
        g, m, d = tc.shape
        flags = moving.reshape(g * m, d)
        counts = flags.sum(axis=1)
        valid = np.arange(width) < counts[:, None]  # [rows, width]
        cols = np.zeros(valid.shape, np.intp)
        cols[valid] = np.nonzero(flags)[1]  # row-major: each row's moving columns in order
        group = np.arange(g * m) // m
        block = _blocks(slot, group, cols)
        block *= valid[:, :, None] & valid[:, None, :]
        fixed = np.where(moving, np.float32(0), tc)
        # the frozen weights' share
        frozen = fixed @ slot.gram if slot.gram is not None else (fixed @ slot.factor[0]) @ slot.factor[1]
        if slot.row_scale is not None:
            block *= np.broadcast_to(slot.row_scale, (g, m, 1)).reshape(-1, 1, 1)
            frozen *= slot.row_scale
        self.block = block
        self.count = int(counts.sum())
        self.index = slot.start + np.flatnonzero(moving)  # into the flat tc / y
        self.pos = np.flatnonzero(valid)  # the moving weights' places in the padded rows
        self.base = frozen[moving].astype(np.float32)
        self.pad = np.zeros((g * m, 1, width), np.float32)
        self.out = np.empty_like(self.pad)
        self.y = np.empty(self.count, np.float32)

    @staticmethod
    def update(slot, tc: np.ndarray, moving: np.ndarray) -> None:
        """Gather the rows' blocks where that pays (first time or after enough weights froze)."""
        count = int(np.count_nonzero(moving))
        if slot.gram is None and slot.factor is None or \
                slot.rows is not None and count >= _ROWS_REBUILD * slot.rows.count:
            return
        g, m, d = tc.shape
        # the multiply-adds of an iteration's product now: tc G2, or tc B B^T with G2's factor B [g, d, r]
        dense = g * m * d * d if slot.gram is not None else 2 * g * m * d * slot.factor[0].shape[2]
        width = int(moving.reshape(g * m, d).sum(axis=1).max(initial=0))
        limit = _ROWS_BYTES if slot.gram is not None else _FACTOR_ROWS_BYTES
        if dense >= _ROWS_MIN_MACS and g * m * width * width <= _ROWS_COST * dense \
                and 4 * g * m * width * width <= limit:
            slot.rows = MovingRows(slot, tc, moving, max(width, 1))

    def product(self, tc: np.ndarray, y: np.ndarray) -> None:
        """y at the moving weights (the others' y is left as it was: their step is zero)."""
        self.pad.reshape(-1)[self.pos] = tc[self.index]
        np.matmul(self.pad, self.block, out=self.out)
        self.out.reshape(-1).take(self.pos, None, self.y)
        self.y += self.base
        y[self.index] = self.y


_GATHER_BYTES = 16 << 20  # a factor's rows gathered at once to build their blocks (bounds the temporary)


def _blocks(slot, group: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Each row's block G2[M_r, M_r] (zero-padded columns included: masked by the caller), [rows,
    width, width] float32: gathered from G2, or made from its factor as B[M_r] B[M_r]^T (a few rows
    at a time: the gathered B rows are width x r floats a row)."""
    if slot.gram is not None:
        return slot.gram[group[:, None, None], cols[:, :, None], cols[:, None, :]]
    b = slot.factor[0]  # [g, d, r]
    rows, width = cols.shape
    out = np.empty((rows, width, width), np.float32)
    step = max(1, _GATHER_BYTES // max(4 * width * b.shape[2], 1))
    for r0 in range(0, rows, step):
        part = b[group[r0:r0 + step, None], cols[r0:r0 + step]]  # [rows, width, r]
        np.matmul(part, part.transpose(0, 2, 1), out=out[r0:r0 + step])
    return out
