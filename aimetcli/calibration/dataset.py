"""The types the calibration-data modules share: ``InputSpec`` (a graph input to feed,
with its ``Dim`` dimensions), ``ImageOptions`` (how images become model input), the
``_Source`` protocol every sample source follows, and ``Dataset``, which holds the
validated sources of every input and serves them in batches (``feed_rows`` counts the
samples of a feed). Opening and checking data is in ``data``, ``checks`` and ``readers``;
import these names from ``aimetcli.calibration.data``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from aimetcli.errors import AimetCliError, ErrorKind


Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """A graph input to feed.

    ``shape`` holds an int for a fixed dimension and a name (str) or None for a
    dynamic one; ``shape`` itself is None when the model declares no shape at all
    (rank unknown: nothing but the dtype is checked).
    """

    name: str
    shape: tuple[Dim, ...] | None
    dtype: np.dtype

    @property
    def batch(self) -> int | None:
        """The fixed batch size (dimension 0), or None when it is dynamic."""
        if self.shape and isinstance(self.shape[0], int):
            return self.shape[0]
        return None


@dataclass(frozen=True)
class ImageOptions:
    """How images become model input.

    Pixels are scaled to [0, 1], then ``(x - mean) / std`` per channel (one value
    is used for every channel). ``resize`` is (height, width); None takes the
    model's fixed height and width. A model whose channel dimension is fixed to 1
    gets grayscale images even without ``grayscale``.
    """

    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    grayscale: bool = False


class _Source(Protocol):
    """Samples of one input, read by range and returned in the input's dtype."""

    shape: tuple[int, ...]  # [N, *sample_shape] of the data

    def read(self, start: int, stop: int) -> np.ndarray: ...


def feed_rows(feeds: dict[str, np.ndarray]) -> int:
    """Samples in a feed: its inputs' leading dimension (1 for a model without inputs)."""
    return next(iter(feeds.values())).shape[0] if feeds else 1


class Dataset:
    """Validated samples for every model input, fed in batches.

    ``labels`` is a 1-D int64 array of ``num_samples`` entries when the data has
    labels. ``fixed_batch`` is the model's fixed batch size (every feed then holds
    exactly that many samples) or None. ``notes`` says what was assumed or dropped.
    """

    def __init__(self, spec: str, inputs: Sequence[InputSpec], sources: Sequence[_Source], num_samples: int,
                 labels: np.ndarray | None, fixed_batch: int | None, notes: list[str], *,
                 labels_note: str | None = None):
        self.spec = spec
        self.inputs = list(inputs)
        self._sources = list(sources)
        self.num_samples = num_samples
        self.labels = labels
        self.fixed_batch = fixed_batch
        self.notes = notes
        self.labels_note = labels_note  # why an array found under a labels key is not used as labels

    @functools.cached_property
    def sample_nbytes(self) -> int:
        """Bytes of model input one sample takes (all inputs; at least 1)."""
        first = next(iter(self.batches(1)), {})
        return max(1, sum(a.nbytes for a in first.values()) // max(feed_rows(first), 1))

    def _step(self, batch_size: int) -> tuple[int, int]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise AimetCliError(f"--batch-size must be a positive integer, got {batch_size!r}", ErrorKind.USAGE)
        if self.fixed_batch is not None:
            step = self.fixed_batch
            return step, self.num_samples - self.num_samples % step
        return batch_size, self.num_samples

    def num_batches(self, batch_size: int) -> int:
        step, stop = self._step(batch_size)
        return -(-stop // step)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for onnxruntime, in order: {input name: contiguous array of the input's dtype}."""
        step, stop = self._step(batch_size)
        return self._iterate(step, stop)

    def _iterate(self, step: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, stop, step):
            end = min(start + step, stop)
            yield {spec.name: src.read(start, end) for spec, src in zip(self.inputs, self._sources)}

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.inputs)
        return f"Dataset({self.spec!r}, inputs=[{names}], num_samples={self.num_samples})"
