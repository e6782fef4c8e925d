"""Random calibration samples (``random:N``): standard-normal noise, each sample from its own
generator (``_RandomSource``), for float inputs of fixed shape; ``_open_random`` is what
``data.open_data`` dispatches to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aimetcli.calibration.checks import (
    _data_error,
    _fixed_batch,
    _fmt_dim,
    _fmt_expected,
    _kind,
)
from aimetcli.calibration.dataset import Dataset, InputSpec, _Source
from aimetcli.errors import AimetCliError, ErrorKind


class _RandomSource:
    """Standard-normal samples, each from its own generator: independent of batching."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, seed: int, index: int):
        self.shape = shape
        self.dtype = dtype
        self.seed = seed
        self.index = index

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        for i in range(start, stop):
            rng = np.random.default_rng((self.seed, self.index, i))
            out[i - start] = rng.standard_normal(self.shape[1:], dtype=np.float32)
        return out


def _open_random(spec: str, count_text: str, inputs: Sequence[InputSpec], num_samples: int | None,
                 seed: int) -> Dataset:
    try:
        n = int(count_text)
    except ValueError:
        n = 0
    if n <= 0:
        raise AimetCliError(
            f"--data {spec}: expected random:N with N a positive number of samples, e.g. random:64", ErrorKind.USAGE
        )
    if num_samples is not None:
        n = min(n, num_samples)
    sources: list[_Source] = []
    for index, inp in enumerate(inputs):
        if _kind(inp.dtype) != "float":
            raise _data_error(
                spec, f"input '{inp.name}' is {inp.dtype.name}; random data only feeds float inputs: "
                "give a data file (.npy or .npz)",
            )
        if inp.shape is None:
            raise _data_error(
                spec, f"input '{inp.name}' has no declared shape; random data needs fixed dims: "
                "give a data file (.npy or .npz)",
            )
        if not inp.shape:
            raise _data_error(spec, f"input '{inp.name}' is a scalar (shape []); random data does not feed it: "
                                    "give an .npz with its values ([N], or 0-d for every sample)")
        for axis, d in enumerate(inp.shape[1:], start=1):
            if not isinstance(d, int):
                raise _data_error(
                    spec, f"input '{inp.name}' {_fmt_expected(inp.shape)} has dynamic dim {axis} ({_fmt_dim(d)}); "
                    "random data needs every dim but the batch fixed: give a data file (.npy or .npz)",
                )
        sources.append(_RandomSource((n, *(int(d) for d in inp.shape[1:])), inp.dtype, seed, index))
    notes: list[str] = []
    batch = _fixed_batch(spec, inputs, n, notes)
    return Dataset(spec, inputs, sources, n, None, batch, notes, calibration_warnings=[RANDOM_WARNING])


RANDOM_WARNING = ("random data (standard-normal noise) gives poor calibration ranges for a model trained on "
                  "real inputs: give real samples (.npy, .npz or an image folder) with --data")
