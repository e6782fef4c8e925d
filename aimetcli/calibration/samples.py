"""Where a model's outputs keep their samples (:class:`SamplesFirst`).

Every reader of a model's runs (top-1, per-sample energies, the runs joined into one array)
takes axis 0 of a tensor as its samples, as the data's arrays have them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from aimetcli.calibration.dataset import feed_rows

__all__ = ["SamplesFirst"]


class SamplesFirst:
    """Moves the samples of each tensor a model's runs give to axis 0, where every reader of runs
    looks for them (top-1, per-sample energies, runs joined into one array). Most exports put them
    there; a recurrent model exported time-major gives [time, batch, ...] (a BiLSTM EEG model's
    logits: [time, batch, 4]), and joining its runs along axis 0 failed, or mixed time steps with
    samples. A tensor's sample axis: the one axis of its declared shape named like an input's axis 0
    (a symbolic batch dim), else the one axis as long as the run's samples (axis 0 where it is one
    of several, or none is, or the run holds one sample: a model of fixed batch 1 fed one sample a
    run keeps axis 0), found on the first run and kept."""

    def __init__(self, model: ir.Model, names: Sequence[str] | None = None):
        batch = {d.value for v in model.graph.inputs if v.shape is not None and len(v.shape) > 0
                 and isinstance(d := v.shape[0], ir.SymbolicDim) and d.value}
        names = [v.name or "" for v in model.graph.outputs] if names is None else names
        values: dict[str, ir.Value] = {}
        if batch:  # no named batch dim: no declared shape can name one
            values = {v.name: v for n in model.graph for v in n.outputs if v.name}
            values.update((v.name, v) for v in model.graph.outputs if v.name)
        self._declared = [self._named(values.get(n), batch) for n in names]
        self._axes: list[int] | None = None

    @staticmethod
    def _named(value: ir.Value | None, batch: set) -> int | None:
        if value is None or value.shape is None or not batch:
            return None
        hits = [a for a, d in enumerate(value.shape) if isinstance(d, ir.SymbolicDim) and d.value in batch]
        return hits[0] if len(hits) == 1 else None

    def __call__(self, outs: list, feeds) -> list:
        """``outs`` of a run on ``feeds`` (calibration.dataset.feed_rows samples), each with its
        samples on axis 0."""
        if self._axes is None:
            rows = feed_rows(feeds)
            self._axes = [d if d is not None else _run_axis(o, rows) for d, o in zip(self._declared, outs)]
        return [np.moveaxis(o, a, 0) if a and isinstance(o, np.ndarray) and o.ndim > a else o
                for o, a in zip(outs, self._axes)]


def _run_axis(out, rows: int) -> int:
    shape = getattr(out, "shape", ())
    along = [a for a, n in enumerate(shape) if n == rows]
    return 0 if rows < 2 or not along or 0 in along else along[0]
