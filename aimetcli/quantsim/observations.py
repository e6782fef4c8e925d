"""What calibration runs observed of a model's activations, kept for the next calibration of it
(ptq builds many sims of one model; quantsim's calibration asks here before it runs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from aimetcli.calibration.observers import observed_range
from aimetcli.kernels.quant import Encoding, QuantScheme


# the observation kind of onnxruntime's in-graph min and max (calibrate._reduced_minmax): (min, max) per tensor
REDUCTIONS = "reductions"


class SharedObservations:
    """What calibration runs observed of one model's activations, for the next calibration of it.

    Activation ranges are observed with FP32 weights (:func:`observed_model`), so sims of one
    model on one dataset that differ only in their weight options (granularity, weight bitwidth,
    weight scheme) observe exactly the same statistics: each tensor's observation is kept per
    observer kind and dataset, and a calibration runs over the data only for the tensors not yet
    observed (one run for all of them). ptq's per-channel candidate reuses its incumbent's run this
    way. ``histogram_scheme``: a histogram scheme (tf-enhanced, percentile) that a later sim of the
    model will ask for; a min-max sim then observes with that scheme's histograms (exact min and
    max too: ``observe_encoding``) instead of onnxruntime's reductions, so both schemes' sims
    calibrate from one run. The caller promises that the model's FP32 activations do not change
    while the object is in use (ptq makes one per model state, and :meth:`inherit` carries the
    observations of the tensors a rewrite leaves equal to the next state).
    """

    def __init__(self, histogram_scheme: QuantScheme | None = None) -> None:
        self.histogram_scheme = None if histogram_scheme is QuantScheme.MIN_MAX else histogram_scheme
        self._seen: dict[tuple, dict[str, Any]] = {}  # (observer kind, id(dataset)) -> tensor -> observation
        # (id(observation), settings) -> (observation, its encoding): sims of the model that ask an
        # observation for the same grid (ptq's weight candidates, bias correction's kept grids) search once
        self._encodings: dict[tuple, tuple[Any, Encoding]] = {}
        # id(dataset) -> tensor -> bytes a sample of it takes, measured by a probe run (_runs_too_big):
        # a rewrite keeps the activations' sizes, so the first calibration's probe answers for the others
        self.sizes: dict[int, dict[str, float]] = {}
        # id(dataset) -> (tensors, their values run by run): what the next histogram run over the
        # dataset keeps besides its observations (:meth:`keep`)
        self.taps: dict[int, tuple[list[str], dict[str, list[np.ndarray]]]] = {}
        self.made = 0  # runs over the data made (tests count them)
        self.reused = 0  # calibrations served without a run
        self.tensors_run = 0  # tensors observed by those runs

    @classmethod
    def for_schemes(cls, schemes: tuple) -> SharedObservations:
        """For sims of the model under each of ``schemes``: the histogram scheme among them, if
        any, observes for min-max too."""
        return cls(next((sc for sc in schemes if sc is not QuantScheme.MIN_MAX), None))

    def observe(self, kind: str, dataset, tensors: list[str],
                compute: Callable[[list[str]], dict[str, Any]]) -> dict[str, Any]:
        """Each of ``tensors``' observation of ``kind`` over ``dataset``; ``compute(missing)`` runs
        once for those not yet observed and returns one entry per tensor it was given."""
        seen = self._seen.setdefault((kind, id(dataset)), {})
        missing = [t for t in tensors if t not in seen]
        if missing:
            seen.update(compute(missing))
            self.made += 1
            self.tensors_run += len(missing)
        else:
            self.reused += 1
        return {t: seen[t] for t in tensors}

    def keep(self, dataset, tensors: list[str]) -> dict[str, list[np.ndarray]]:
        """Ask the next run over ``dataset`` that copies activations out (a histogram run) to keep
        the values of ``tensors`` too: the dict returned gets them, a list of arrays per tensor, run
        by run in the data's order; it stays empty where no such run comes, and a tensor the model
        lacks stays out (ptq's judge reads FP32's outputs from the folded model's calibration run)."""
        sink: dict[str, list[np.ndarray]] = {}
        self.taps[id(dataset)] = (list(tensors), sink)
        return sink

    def encoding(self, observation, settings: tuple, compute: Callable[[], Encoding]) -> Encoding:
        """``compute()``, the grid of ``observation`` under ``settings`` (every setting it reads), once
        per pair: an observation is never updated once observed, and the search is a pure function."""
        key = (id(observation), settings)
        hit = self._encodings.get(key)
        if hit is None or hit[0] is not observation:
            hit = self._encodings[key] = (observation, compute())
        return hit[1]

    def inherit(self, unchanged: Callable[[str], bool], *, min_max_only: bool = False) -> SharedObservations:
        """The observations of another state of the model, one whose FP32 activations equal this
        one's on the tensors ``unchanged`` accepts (an exact rewrite: equalization changes only
        the tensors inside its scaling sets); the rest are observed again when asked for.

        ``min_max_only``: only min-max sims will ask (ptq's bias correction once the flow chose
        min-max). The new object then observes with onnxruntime's reductions, one pass that copies
        two numbers a tensor out, instead of this one's histograms (a reductions pass to fix their
        bins where the activations are big, then a pass that copies every tensor out and bins it:
        two thirds of a PP-OCRv6 det's recalibration); the histograms' exact min and max answer
        for the tensors kept (the same range a reduction gives)."""
        new = SharedObservations(None if min_max_only else self.histogram_scheme)
        new._seen = {key: {t: o for t, o in seen.items() if unchanged(t)} for key, seen in self._seen.items()}
        if min_max_only and self.histogram_scheme is not None:
            for (kind, ds), seen in list(new._seen.items()):
                if kind == self.histogram_scheme.value:
                    into = new._seen.setdefault((REDUCTIONS, ds), {})
                    for t, o in seen.items():
                        if not getattr(o, "nonfinite_count", 0) and o.observed:  # NaN/Inf or empty: observed apart
                            into.setdefault(t, observed_range(o))
        new._encodings = dict(self._encodings)  # keyed by the observation: only the kept ones are asked again
        new.sizes = self.sizes  # the sizes do not change with the values: shared
        return new
