"""Per quantized tensor: the grid's range, the data's range, how much of the data the grid clips,
and a histogram of the values (analyze's "range" section, AIMET QuantAnalyzer's
``export_per_layer_stats_histogram`` and min/max export in one pass).

For a grid with scale ``s`` and representable range ``[lo, hi]`` (the dequantized ``qmin`` and
``qmax``), a value ``x`` is *clipped* when ``x < lo - s/2`` or ``x > hi + s/2``: rounding to the
nearest step would put it off the grid, so the quantizer saturates it; values within half a step
of an end round onto it. The clipped fraction is counted exactly, value by value, per channel
for per-channel grids.

Weights are read from the model. Activations are observed in one onnxruntime run over the
calibration data of the model calibration observes (``quantsim.calibrate.observed_model``: FP32
weights) with every quantized activation exposed as an output, each
feeding a :class:`~aimetcli.calibration.observers.HistogramObserver` (AIMET's merge of growing
ranges) and an exact count of the values beyond the grid, made for a batch only once the range
observed so far has left the clip bounds (until then no value can lie beyond them). A min-max grid never clips its own
calibration data by more than half a step; tf-enhanced and percentile grids do, on purpose.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli.kernels.quant import Encoding

BINS = 128  # histogram bins per tensor (the report draws them)


@dataclass
class TensorRange:
    """One quantizer's tensor. Per-channel grids: ``grid_min``/``grid_max`` are the widest
    channel's ends (the smallest min, the largest max), ``channels`` how many grids there are."""

    tensor: str
    kind: str  # "weight", "bias" or "activation"
    bitwidth: int
    channels: int  # 1 for a per-tensor grid
    grid_min: float
    grid_max: float
    data_min: float
    data_max: float
    values: int  # finite values seen
    clipped: int  # of those, beyond the grid by more than half a step
    # BINS counts over [data_min, data_max]; empty for a tensor whose histogram was not asked for
    histogram: list[int] = field(default_factory=list, repr=False)

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.values if self.values else 0.0

    @property
    def range_used(self) -> float:
        """The data's range over the grid's: below 1 the grid spends steps on values the data never
        takes (a wide symmetric grid for a one-signed tensor, an outlier-stretched range of a
        weight whose channels share one grid); above 1 it clips."""
        width = self.grid_max - self.grid_min
        return (self.data_max - self.data_min) / width if width > 0 else float("inf")

    def to_json(self) -> dict:
        return {"tensor": self.tensor, "kind": self.kind, "bitwidth": self.bitwidth, "channels": self.channels,
                "grid_min": self.grid_min, "grid_max": self.grid_max, "data_min": self.data_min,
                "data_max": self.data_max, "values": self.values, "clipped": self.clipped,
                "clipped_fraction": self.clipped_fraction, "range_used": self.range_used,
                "histogram": self.histogram}


def _clip_limits(enc: Encoding) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) beyond which a value is clipped (module docstring), per channel: the grid's
    ends widened by half a step."""
    lo, hi = enc.dequantized_bounds()
    half = enc.scale.astype(np.float64) / 2
    return np.asarray(lo, np.float64) - half, np.asarray(hi, np.float64) + half


def _bounds(enc: Encoding, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_clip_limits`, broadcastable to an ``ndim`` tensor on the grid's axis."""
    lo, hi = _clip_limits(enc)
    return enc.broadcast(lo, ndim), enc.broadcast(hi, ndim)


def _unclipped(enc: Encoding) -> tuple[float, float]:
    """An interval no value of which ``enc`` clips, in any channel: the largest low and the
    smallest high of :func:`_clip_limits`."""
    lo, hi = _clip_limits(enc)
    return float(np.max(lo)), float(np.min(hi))


def count_clipped(x: np.ndarray, enc: Encoding) -> int:
    """Finite values of ``x`` that ``enc`` clips (module docstring)."""
    lo, hi = _bounds(enc, x.ndim)
    return int(np.count_nonzero(x < lo) + np.count_nonzero(x > hi))


def _grid_ends(enc: Encoding) -> tuple[float, float]:
    lo, hi = enc.dequantized_bounds()
    return float(np.min(lo)), float(np.max(hi))


def weight_range(name: str, w: np.ndarray, enc: Encoding, kind: str = "weight", histogram: bool = True
                 ) -> TensorRange:
    """:class:`TensorRange` of a weight (or bias) ``w`` on its grid ``enc`` (without its histogram
    unless ``histogram``)."""
    x = np.asarray(w, dtype=np.float32)
    if enc.per_channel and enc.axis is None:  # a grid read back without its axis: the output channels
        enc = Encoding(enc.bitwidth, enc.symmetric, enc.scale, enc.offset, axis=0)
    finite = np.isfinite(x)
    values = x[finite] if not finite.all() else x.reshape(-1)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    counts = np.histogram(values, bins=BINS, range=(lo, hi if hi > lo else lo + 1.0))[0] if histogram else None
    g_lo, g_hi = _grid_ends(enc)
    return TensorRange(name, kind, enc.bitwidth, enc.num_channels if enc.per_channel else 1, g_lo, g_hi, lo, hi,
                       int(values.size), count_clipped(x, enc), [] if counts is None else counts.astype(int).tolist())


def activation_ranges(model: ir.Model, activations: dict[str, Encoding], dataset,
                      batch_size: int = 32, progress=None, histograms: Collection[str] | None = None
                      ) -> list[TensorRange]:
    """:class:`TensorRange` of each activation of ``activations`` (tensor names of ``model``, the
    FP32 model the sim was built from) over ``dataset``, observed as calibration observes them
    (module docstring). One onnxruntime run over the data, in runs as calibration's; ``progress``
    counts ``batch_size`` batches. Only the tensors of ``histograms`` (default: all) get a
    histogram; the others' ranges are kept by a MinMaxObserver, which costs a fraction of binning
    every value."""
    from aimetcli import runtime
    from aimetcli.calibration.observers import HistogramObserver, MinMaxObserver
    from aimetcli.calibration.data import feed_rows
    from aimetcli.graph_builder import add_outputs
    from aimetcli.quantsim.calibrate import ProgressSteps, observed_model

    copy = observed_model(model)
    inputs = {v.name for v in model.graph.inputs}
    produced = {v.name: v for n in copy.graph for v in n.outputs if v.name}
    names = [t for t in activations if t in produced]
    add_outputs(copy.graph, [produced[t] for t in names], None)
    fed = [t for t in activations if t in inputs]
    drawn = set(activations) if histograms is None else set(histograms)
    observers: dict[str, HistogramObserver | MinMaxObserver] = {
        t: HistogramObserver(BINS) if t in drawn else MinMaxObserver() for t in (*fed, *names)}
    clipped = dict.fromkeys(observers, 0)
    sizes = dict.fromkeys(observers, 0)
    session = runtime.Session(copy, runtime.MEASURE) if names else None

    inside = {t: _unclipped(activations[t]) for t in observers}

    def observe(t: str, value: np.ndarray) -> None:
        x = np.asarray(value, dtype=np.float32)
        obs = observers[t]
        obs.update(x)
        sizes[t] += x.size
        seen = _extremes(obs) if obs.observed else None
        if seen is None or not inside[t][0] <= seen[0] <= seen[1] <= inside[t][1]:
            clipped[t] += count_clipped(x, activations[t])

    step = ProgressSteps(dataset, batch_size, progress)
    # as calibration: runs small enough that every activation of a run fits in memory at once
    for feeds in dataset.batches(min(batch_size, runtime.histogram_run_size(model, dataset))):
        for t in fed:
            observe(t, feeds[t])
        if session is not None:
            for t, value in zip(names, session.run(feeds, names)):
                observe(t, value)
        step.samples(feed_rows(feeds))
    step.finish()
    out = []
    for t, obs in observers.items():
        if not obs.observed:  # no finite value: nothing to draw (calibration has said so)
            continue
        enc = activations[t]
        counts = obs.histogram()[0].astype(int).tolist() if isinstance(obs, HistogramObserver) else []
        lo, hi = _extremes(obs)
        g_lo, g_hi = _grid_ends(enc)
        out.append(TensorRange(t, "activation", enc.bitwidth, 1, g_lo, g_hi, float(lo), float(hi),
                               sizes[t] - obs.nonfinite_count, clipped[t], counts))
    return out


def _extremes(obs) -> tuple[float, float]:
    """(min, max) of the finite values a per-tensor observer has seen."""
    from aimetcli.calibration.observers import observed_range

    lo, hi = observed_range(obs)
    return float(lo), float(hi)


def tensor_ranges(model: ir.Model, encodings, dataset, batch_size: int = 32, progress=None,
                  histograms: Collection[str] | None = None) -> list[TensorRange]:
    """:class:`TensorRange` of every quantizer of ``encodings`` (quantsim's ``Encodings``) over
    ``model`` (the FP32 model) and ``dataset`` (the calibration data; ``progress`` and
    ``histograms`` as :func:`activation_ranges`)."""
    inits = model.graph.initializers
    out = activation_ranges(model, encodings.activations, dataset, batch_size, progress, histograms)
    for name, enc in encodings.params.items():
        tensor = inits[name].const_value if name in inits else None
        if tensor is not None:
            w = tensor.numpy()
            kind = "bias" if w.ndim == 1 and not enc.per_channel and _is_bias(model, name) else "weight"
            out.append(weight_range(name, w, enc, kind, histograms is None or name in histograms))
    return out


def _is_bias(model: ir.Model, name: str) -> bool:
    """The third input of a Conv, ConvTranspose or Gemm."""
    for node in model.graph:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2:
            b = node.inputs[2]
            if b is not None and b.name == name:
                return True
    return False
