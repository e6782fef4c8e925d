"""The types the calibration-data modules share: ``InputSpec`` (a graph input to feed,
with its ``Dim`` dimensions), ``ImageOptions`` (how images become model input), the
``_Source`` protocol every sample source follows, and ``Dataset``, which holds the
validated sources of every input and serves them in batches (``feed_rows`` counts the
samples of a feed, ``Feed`` is a feed that knows its count). Opening and checking data is
in ``data``, ``checks`` and the source modules (``arrays``, ``images``, ``random_data``);
import these names from ``aimetcli.calibration.data``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from aimetcli.errors import AimetCliError, ErrorKind


Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """A graph input to feed.

    ``shape`` holds an int (> 0) for a fixed dimension and a name (str) or None for a
    dynamic one (``input_specs`` reads a declared size <= 0 as dynamic, as legacy
    converters write -1 or 0 for an unknown size); ``shape`` itself is None when the
    model declares no shape at all (rank unknown: nothing but the dtype is checked).
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
    is used for every channel); ``mean`` and ``std`` None mean not given (0 and 1,
    with a warning when both are missing). Without ``center_crop``, ``resize`` is the
    (height, width) every image is resized to (its aspect ratio is not kept); None
    takes the model's fixed height and width. With ``center_crop`` (height, width),
    an image is scaled (aspect ratio kept) so that its shorter side is
    ``shorter_side``, or, when that is None, to ``resize`` when given, else just enough
    to cover the crop; then the centered crop is taken. ImageNet's usual
    preprocessing is ``shorter_side=256, center_crop=(224, 224)``. A model whose
    channel dimension is fixed to 1 gets grayscale images even without ``grayscale``.
    """

    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str = "NCHW"
    grayscale: bool = False
    center_crop: tuple[int, int] | None = None
    shorter_side: int | None = None


class _Source(Protocol):
    """Samples of one input, read by range and returned in the input's dtype."""

    shape: tuple[int, ...]  # [N, *sample_shape] of the data

    def read(self, start: int, stop: int) -> np.ndarray: ...


class Feed(dict):
    """{input name: array} for one onnxruntime run, with ``rows``, the samples it holds (an
    input fed one sample per run, or a constant, has no sample axis to count them by)."""

    def __init__(self, arrays: dict[str, np.ndarray], rows: int):
        super().__init__(arrays)
        self.rows = rows


def feed_rows(feeds: dict[str, np.ndarray]) -> int:
    """Samples in a feed: ``Feed.rows``, else its inputs' leading dimension (1 for a model
    without inputs)."""
    rows = getattr(feeds, "rows", None)
    if rows is not None:
        return rows
    return next(iter(feeds.values())).shape[0] if feeds else 1


class Dataset:
    """Validated samples for every model input, fed in batches.

    ``labels`` is a 1-D int64 array of ``num_samples`` entries when the data has
    labels. ``fixed_batch`` is the model's fixed batch size (every feed then holds
    exactly that many samples) or None; it is 1 when an input is fed one sample per
    run. ``notes`` are details of what was done (shown with -v); ``warnings`` say what
    was assumed that may not be what the user meant, and how to say otherwise;
    ``calibration_warnings`` matter only when the data calibrates (random data's
    ranges), not when it is scored.
    """

    def __init__(self, spec: str, inputs: Sequence[InputSpec], sources: Sequence[_Source], num_samples: int,
                 labels: np.ndarray | None, fixed_batch: int | None, notes: list[str], *,
                 labels_note: str | None = None, warnings: Sequence[str] = (),
                 calibration_warnings: Sequence[str] = ()):
        self.spec = spec
        self.inputs = list(inputs)
        self._sources = list(sources)
        self.num_samples = num_samples
        self.labels = labels
        self.fixed_batch = fixed_batch
        self.notes = notes
        self.warnings = list(warnings)
        self.calibration_warnings = list(calibration_warnings)
        self.labels_note = labels_note  # why an array found under a labels key is not used as labels
        self._on_first_read: Callable[[], None] | None = None

    def on_first_read(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when batches are first asked for: by then the command's own
        checks have passed, so that what it prints (the data's warnings) never precedes a
        one-line usage error."""
        self._on_first_read = callback

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
        if self._on_first_read is not None:
            callback, self._on_first_read = self._on_first_read, None
            callback()
        return self._iterate(step, stop)

    def _iterate(self, step: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, stop, step):
            end = min(start + step, stop)
            yield Feed({spec.name: src.read(start, end) for spec, src in zip(self.inputs, self._sources)},
                       end - start)

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.inputs)
        return f"Dataset({self.spec!r}, inputs=[{names}], num_samples={self.num_samples})"
