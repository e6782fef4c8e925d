"""Phase two of quantsim: compute every quantizer's encoding.

Weights: from the weight itself (per channel on the placement's axis), with the
chosen scheme. Activations: one onnxruntime run over the calibration data of a
copy of the FP32 model (:func:`observed_model`: its weights as they are, as
onnxruntime's quantize_static calibrates; AIMET observes with its weight quantizers
on) whose quantized tensors are extra graph outputs; each batch updates a streaming
observer per tensor (min/max, or a 512-bin histogram for tf-enhanced and percentile),
so memory stays at one batch of activations whatever the number of samples.
Min-max ranges are reduced inside onnxruntime instead. Both run onnxruntime on
small runs of samples (see runtime.reduction_run_size, runtime.histogram_run_size), whatever
``--batch-size`` says:
progress still counts batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli import runtime
from aimetcli.graph_builder import Builder, add_outputs, editable_copy, taken_names, values_by_name
from aimetcli.runtime import reduction_run_size  # noqa: F401  (adaround.py imports it from here)
from aimetcli.calibration.data import feed_rows
from aimetcli.calibration.observers import (EmptyObserverError, MinMaxObserver, make_observer, observe_encoding,
                                            observed_range)
from aimetcli.calibration.samples import SamplesFirst
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.kernels.quant import (Encoding, QuantScheme, encoding_from_range, fake_quantize_finite,
                                    is_unsigned_symmetric, unsigned_symmetric_encoding)
from aimetcli.options import QuantOptions
from aimetcli.quantsim.observations import REDUCTIONS, SharedObservations
from aimetcli.quantsim.placement import MASK_FLOOR, Placement, drop_quantizers, revise_after_calibration


@dataclass
class Encodings:
    activations: dict[str, Encoding] = field(default_factory=dict)
    params: dict[str, Encoding] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)
    constant: dict[str, float] = field(default_factory=dict)  # model inputs with one value in all the data
    empty: list[str] = field(default_factory=list)  # tensors with no value in any sample (a dim of length 0)
    masked: dict[str, float] = field(default_factory=dict)  # observed max of tensors seen below MASK_FLOOR


def param_encodings(model: ir.Model, placement: Placement, opts: QuantOptions, *,
                    frozen: bool = True) -> dict[str, Encoding]:
    """Every parameter's grid, computed from the parameter; ``frozen``: a weight whose grid an
    AdaRound run recorded in the model (``aimetcli.quantsim.frozen.frozen_encodings``) keeps that grid
    where it has the bitwidth, symmetry and channel axis the placement asks for."""
    from aimetcli.quantsim.frozen import frozen_encodings

    out: dict[str, Encoding] = dict(frozen_encodings(model, placement)) if frozen else {}
    inits = model.graph.initializers
    for pq in placement.params:
        if pq.tensor in out:
            continue
        w = np.asarray(inits[pq.tensor].const_value.numpy(), dtype=np.float32)  # read only: no copy needed
        if not np.all(np.isfinite(w)):
            raise AimetCliError(
                f"{pq.kind} {pq.tensor!r} of a {pq.op} holds {int(np.count_nonzero(~np.isfinite(w)))} NaN/Inf "
                "values, which no quantization grid can represent; fix the model's weights", ErrorKind.INPUT)
        if pq.kind == "bias":
            lim = float(np.abs(w).max()) if w.size else 0.0
            out[pq.tensor] = encoding_from_range(-lim, lim, pq.bitwidth, True, min_range=0.0)
            continue
        out[pq.tensor] = _weight_encoding(w, pq, opts, placement)
    return out


# Histogram-scheme grids of weights already searched, by the weight's bytes and every setting the
# search reads: ptq computes the same weights' grids for each candidate sim, bias correction and
# AdaRound (on PP-OCRv6 rec small with per-channel tf-enhanced weights, 3 times 66 weights, most
# of a stage's time). A pure function's memo, bounded.
_SEARCHED: dict[tuple, Encoding] = {}
_SEARCHED_MAX = 4096


def _weight_encoding(w: np.ndarray, pq, opts: QuantOptions, placement: Placement) -> Encoding:
    strict = placement.strict_symmetric and pq.symmetric

    def search() -> Encoding:
        observer = make_observer(opts.scheme, axis=pq.axis)
        observer.update(w)
        return observe_encoding(observer, opts.scheme, pq.bitwidth, pq.symmetric, percentile=opts.percentile,
                                strict_symmetric=strict, unsigned_symmetric=placement.unsigned_symmetric)

    if opts.scheme is QuantScheme.MIN_MAX:  # a min and a max: cheaper than the key
        return search()
    import hashlib

    digest = hashlib.blake2b(np.ascontiguousarray(w).data, digest_size=16).digest()
    key = (digest, w.shape, opts.scheme, opts.percentile, pq.bitwidth, pq.symmetric, pq.axis, strict,
           placement.unsigned_symmetric)
    hit = _SEARCHED.get(key)
    if hit is None:
        if len(_SEARCHED) >= _SEARCHED_MAX:
            _SEARCHED.clear()
        hit = _SEARCHED[key] = search()
    return hit


def calibration_weights(model: ir.Model, params: dict[str, Encoding]) -> ir.Model:
    """A copy of the model (tensors shared, graph_builder.editable_copy) with the weights of
    ``params`` fake-quantized, each when first read (``ir.LazyTensor``): a graph pruned to a few
    layers (an AdaRound pass from its cut) computes only theirs, not a copy of every weight."""

    def fake_quantized(name: str, tensor: ir.TensorProtocol) -> ir.TensorProtocol | None:
        enc = params.get(name)
        if enc is None:
            return None

        def compute() -> ir.TensorProtocol:
            arr = np.asarray(tensor.numpy())
            # param_encodings refused NaN/Inf weights: the finite kernel is exact here
            return g.tensor(fake_quantize_finite(arr.astype(np.float32, copy=False), enc).astype(arr.dtype, copy=False),
                            name)

        return ir.LazyTensor(compute, dtype=tensor.dtype, shape=tensor.shape, cache=True, name=name)

    return editable_copy(model, fake_quantized)


def observed_model(model: ir.Model) -> ir.Model:
    """The copy (tensors shared) whose activations calibration observes: FP32 weights.

    A grid's job is to hold the sim's values near FP32's. With the weights fake-quantized (as
    AIMET observes), an activation's range is FP32's plus the weights' error carried so far; where
    that error is large, the grid widens to hold it: on PP-OCRv5 det (per-tensor W8) ten backbone
    tensors' ranges grew 2.2-4.6x, every value downstream got a grid that much coarser, and the
    output fell to 2.4 dB (FP32 ranges: 4.3 dB; docs/design.md, "Activation ranges from FP32").
    FP32's range [lo, hi] holds every FP32 value r, so saturating a sim value v to it never moves
    v away from r (|clip(v) - r| <= |v - r|), and its step is the finest that holds FP32's data.
    """
    return calibration_weights(model, {})


def calibration_model(model: ir.Model, placement: Placement, extra: list[str] | tuple = ()) -> ir.Model:
    """A copy (:func:`observed_model`) with the quantized activations (and the tensors ``extra``)
    exposed as outputs (their own type)."""
    copy = observed_model(model)
    graph = copy.graph
    skip = {v.name for v in (*graph.outputs, *graph.inputs)}
    values = values_by_name(graph)
    wanted = dict.fromkeys([*(aq.tensor for aq in placement.activations), *extra])
    exposed = [values[t] for t in wanted if t not in skip]
    for value in exposed:  # a value of unknown type is declared float
        if value.dtype is None:
            value.type = ir.TensorType(ir.DataType.FLOAT)
    add_outputs(graph, exposed, None)
    return copy


def _reduced_minmax(model: ir.Model, tensors: list[str], dataset, batch_size: int, progress, *,
                    for_histograms: bool = False) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """Min and max of each tensor of :func:`observed_model` over the data, computed inside onnxruntime.

    Each tensor feeds a ReduceMin and a ReduceMax (all axes, scalar outputs), so
    nothing but two numbers per tensor and batch leaves the session: no activation
    is copied out, and onnxruntime still fuses what it likes. The max of a 4-D tensor
    is taken by GlobalMaxPool first, which onnxruntime runs on its blocked (NCHWc)
    conv layout without copying the tensor back to NCHW (a third of the time of a
    plain ReduceMax here). onnxruntime's ReduceMin and ReduceMax skip a NaN anywhere but at
    a tensor's first element, so each tensor also feeds a sum (of its per-channel means for a
    4-D tensor, again on the blocked layout), which any NaN or Inf turns non-finite. Tensors
    that show one are returned apart, for the observers (which skip and count such values,
    so quantsim warns as with the other schemes). ``for_histograms``: the ranges a histogram's bins
    span; no sum (a range is then that of the values ReduceMin and ReduceMax do not skip: the
    observers see and count the others) and a ReduceMin on every tensor (a histogram starts at the
    true minimum, not at 0).
    """
    if not tensors:
        return {}, []
    copy = observed_model(model)
    graph = copy.graph
    taken = {o.name for n in graph for o in n.outputs} | {i.name for i in graph.inputs}
    b = Builder(graph, taken_names(graph))
    outputs: list[ir.Value] = []
    pairs: list[tuple[str, str | None, str, str | None]] = []
    # Relu and Clip(0, ...) outputs are never negative and every range includes 0: no ReduceMin
    nonneg = set() if for_histograms else non_negative_outputs(model)
    ranks = {v.name: len(v.shape) for n in model.graph for v in n.outputs if v.shape is not None}
    for i, name in enumerate(tensors):
        lo, hi, check = f"aimetcli_calib_min_{i}", f"aimetcli_calib_max_{i}", f"aimetcli_calib_check_{i}"
        while lo in taken or hi in taken or check in taken or check + "_mean" in taken or hi + "_pooled" in taken:
            lo, hi, check = lo + "_", hi + "_", check + "_"
        if name not in nonneg:
            outputs.append(b.node("ReduceMin", [name], lo, keepdims=0))
        source = summed = name
        if ranks.get(name) == 4:
            source = b.node("GlobalMaxPool", [name], hi + "_pooled")
            summed = b.node("GlobalAveragePool", [name], check + "_mean") if not for_histograms else name
        outputs.append(b.node("ReduceMax", [source], hi, keepdims=0))
        if not for_histograms:
            outputs.append(b.node("ReduceSum", [summed], check, keepdims=0))
        pairs.append((name, lo if name not in nonneg else None, hi, None if for_histograms else check))
    graph.outputs.clear()
    add_outputs(graph, outputs, ir.DataType.FLOAT, [])
    names = [v.name for v in outputs]
    session = runtime.Session(copy, runtime.MEASURE)
    ranges = {name: [np.inf, -np.inf] for name in tensors}
    bad: set[str] = set()
    step = ProgressSteps(dataset, batch_size, progress)
    for feeds in dataset.batches(min(batch_size, runtime.reduction_run_size(dataset))):
        values = dict(zip(names, session.run(feeds, names)))
        step.samples(feed_rows(feeds))
        for name, lo_name, hi_name, check_name in pairs:
            lo = float(values[lo_name]) if lo_name is not None else 0.0
            hi = float(values[hi_name])
            if not (np.isfinite(lo) and np.isfinite(hi) and (check_name is None or np.isfinite(values[check_name]))):
                bad.add(name)
                continue
            r = ranges[name]
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
    step.finish()
    return {n: (r[0], r[1]) for n, r in ranges.items() if n not in bad}, sorted(bad)


class ProgressSteps:
    """Reports one progress step per ``batch_size`` samples, whatever size the runs have."""

    def __init__(self, dataset, batch_size: int, progress: runtime.Progress | None):
        self.total = dataset.num_batches(batch_size)
        self.batch_size, self.progress = batch_size, progress
        self.seen = self.reported = 0

    def samples(self, n: int) -> None:
        self.seen += n
        done = min(self.seen // self.batch_size, self.total)
        if self.progress is not None and done > self.reported:
            self.progress(done - self.reported)
            self.reported = done

    def finish(self) -> None:
        if self.progress is not None and self.total > self.reported:
            self.progress(self.total - self.reported)
            self.reported = self.total


def non_negative_outputs(model: ir.Model) -> set[str]:
    from aimetcli.passes.chains import clip_bounds

    opset = g.opset_version(model)
    out = set()
    for node in model.graph:
        if g.is_op(node, "Relu"):
            out.add(node.outputs[0].name)
        elif g.is_op(node, "Clip"):
            bounds = clip_bounds(node, opset)
            if bounds is not None and bounds[0] >= 0:
                out.add(node.outputs[0].name)
    return out


def calibrate(model: ir.Model, placement: Placement, opts: QuantOptions, dataset, batch_size: int,
              progress: runtime.Progress | None = None, shared: SharedObservations | None = None) -> Encodings:
    """Every quantizer's encoding; then the decisions that need calibrated ranges are revised
    (:func:`~aimetcli.quantsim.placement.revise_after_calibration`: ``placement`` loses the
    quantizers they drop, with the reason), so what is returned is what gets inserted.
    ``shared``: runs over the data already made for this model (:class:`SharedObservations`)."""
    enc = _encodings(model, placement, opts, dataset, batch_size, progress, shared or SharedObservations())
    drop_quantizers(placement, enc.activations, dict.fromkeys(  # nothing to quantize, and no grid to give
        enc.empty, "empty in every calibration sample (a dimension of length 0): nothing to quantize"))
    revise_after_calibration(model, placement, enc.activations, enc.masked)
    return enc


def _encodings(model: ir.Model, placement: Placement, opts: QuantOptions, dataset, batch_size: int,
               progress: runtime.Progress | None, shared: SharedObservations) -> Encodings:
    enc = Encodings(params=param_encodings(model, placement, opts))
    if not placement.activations:
        return enc
    graph_inputs = {v.name for v in model.graph.inputs}

    def strict(a) -> bool:
        return placement.strict_symmetric and a.symmetric

    todo = []
    for a in placement.activations:
        if a.encoding_min is not None and a.encoding_max is not None:  # the config fixes the range
            enc.activations[a.tensor] = encoding_from_range(a.encoding_min, a.encoding_max, a.bitwidth,
                                                            a.symmetric, strict_symmetric=strict(a))
        else:
            todo.append(a)
    if opts.scheme is QuantScheme.MIN_MAX and shared.histogram_scheme is None:
        inner = [a.tensor for a in todo if a.tensor not in graph_inputs]
        observed_ranges = shared.observe(REDUCTIONS, dataset, inner,
                                         lambda missing: _ranges_or_none(model, missing, dataset, batch_size, progress))
        reduced = {t: r for t, r in observed_ranges.items() if r is not None}
        for a in todo:
            if a.tensor in reduced:
                lo, hi = reduced[a.tensor]
                if lo < MASK_FLOOR:
                    enc.masked[a.tensor] = hi
                if is_unsigned_symmetric(a.symmetric, placement.unsigned_symmetric, lo):
                    enc.activations[a.tensor] = unsigned_symmetric_encoding(hi, a.bitwidth)
                else:
                    enc.activations[a.tensor] = encoding_from_range(lo, hi, a.bitwidth, a.symmetric,
                                                                    strict_symmetric=strict(a))
        todo = [a for a in todo if a.tensor not in reduced]  # graph inputs, and tensors with NaN/Inf
        progress = None
    if not todo:
        return enc
    observed = Placement(todo, placement.params, placement.skipped, placement.strict_symmetric,
                         placement.unsigned_symmetric)
    kind = opts.scheme if opts.scheme is not QuantScheme.MIN_MAX else (shared.histogram_scheme or opts.scheme)
    observers = shared.observe(kind.value, dataset, [a.tensor for a in todo],
                               lambda missing: _observe(model, _only(observed, missing), kind, dataset, batch_size,
                                                        progress, shared.sizes.setdefault(id(dataset), {}),
                                                        shared.taps.pop(id(dataset), None)))
    for a in todo:
        obs = observers[a.tensor]
        if not obs.observed and not obs.nonfinite_count:  # no value, and no NaN or Inf: only 0-length batches
            enc.empty.append(a.tensor)
            continue
        if getattr(obs, "nonfinite_count", 0):
            enc.nonfinite[a.tensor] = int(obs.nonfinite_count)
        if a.tensor in graph_inputs and obs.observed and (extremes := observed_range(obs))[0] == extremes[1]:
            enc.constant[a.tensor] = float(extremes[0])
        if obs.observed and (extremes := observed_range(obs))[0] < MASK_FLOOR:
            enc.masked[a.tensor] = float(extremes[1])
        settings = (opts.scheme, a.bitwidth, a.symmetric, opts.percentile, strict(a), placement.unsigned_symmetric)
        try:
            enc.activations[a.tensor] = shared.encoding(obs, settings, lambda: observe_encoding(
                obs, opts.scheme, a.bitwidth, a.symmetric, percentile=opts.percentile, strict_symmetric=strict(a),
                unsigned_symmetric=placement.unsigned_symmetric))
        except EmptyObserverError as exc:
            raise AimetCliError(
                f"calibration saw no finite value of tensor {a.tensor!r}; check the calibration data",
                ErrorKind.DATA) from exc
    return enc


def _ranges_or_none(model: ir.Model, tensors: list[str], dataset, batch_size: int,
                    progress) -> dict[str, tuple[float, float] | None]:
    """:func:`_reduced_minmax` per tensor: None where the tensor showed NaN or Inf (observed apart)."""
    reduced, _ = _reduced_minmax(model, tensors, dataset, batch_size, progress)
    return {t: reduced.get(t) for t in tensors}


def _only(observed: Placement, tensors: list[str]) -> Placement:
    keep = set(tensors)
    return replace(observed, activations=[a for a in observed.activations if a.tensor in keep])


def _observe(model: ir.Model, observed: Placement, scheme: QuantScheme, dataset, batch_size: int,
             progress: runtime.Progress | None, sizes: dict[str, float] | None = None,
             tap: tuple[list[str], dict[str, list[np.ndarray]]] | None = None) -> dict:
    """An observer of ``scheme``'s kind per tensor of ``observed``, fed in one run over the data.

    Histograms: runs of ``runtime.histogram_run_size`` samples, each growing the range as AIMET's
    do, unless the activations those runs would copy out pass ``runtime.HISTOGRAM_RUN_LIMIT``
    (measured on the first samples; only where the declared shapes cannot tell: symbolic sizes).
    Then the bins are fixed before binning: a reductions pass (:func:`_reduced_minmax`, two
    numbers per tensor and run leave onnxruntime) and a numpy pass over the graph inputs give each
    tensor's min and max over all the data, and runs of ``reduction_run_size`` samples fill
    histograms over that range (:class:`HistogramObserver`'s ``value_range``): exact counts, the
    same whatever the run size, where the growing histogram of one run holding all the data is
    exact too. A tensor whose reductions show NaN or Inf (a NaN first in a tensor hides from
    ReduceMin) keeps the growing histogram. ``sizes``: bytes per sample of the tensors earlier
    probes of this model's states measured (SharedObservations.sizes), filled in by this one's.
    ``tap``: (tensors, sink) of :meth:`SharedObservations.keep`: the run keeps their values too.
    """
    graph_inputs = {v.name for v in model.graph.inputs}
    names = [a.tensor for a in observed.activations if a.tensor not in graph_inputs]
    fed = [a for a in observed.activations if a.tensor in graph_inputs]
    produced = {v.name for n in model.graph for v in n.outputs}
    kept, sink = ([t for t in tap[0] if t in produced], tap[1]) if tap is not None and names else ([], {})
    first = SamplesFirst(model, kept)
    extra = [t for t in kept if t not in names]
    session = runtime.Session(calibration_model(model, observed, extra), runtime.MEASURE) if names else None
    run = min(batch_size, runtime.histogram_run_size(model, dataset))
    ranges: dict[str, tuple[float, float]] = {}
    if scheme is not QuantScheme.MIN_MAX and session is not None and _runs_too_big(session, names, model, dataset,
                                                                                   run, sizes):
        ranges, _ = _reduced_minmax(model, names, dataset, batch_size, None, for_histograms=True)
        ranges = {n: r for n, r in ranges.items() if np.isfinite(r[0]) and np.isfinite(r[1])}
        ranges.update(_input_ranges(dataset, [a.tensor for a in fed], batch_size))
        run = min(batch_size, runtime.reduction_run_size(dataset))
    observers = {a.tensor: make_observer(scheme, value_range=ranges.get(a.tensor)) for a in observed.activations}
    step = ProgressSteps(dataset, batch_size, progress)
    for feeds in dataset.batches(run):
        for a in fed:
            observers[a.tensor].update(feeds[a.tensor])
        if session is not None:
            values = dict(zip(names + extra, session.run(feeds, names + extra)))
            for name in names:
                observers[name].update(values[name])
            for name, value in zip(kept, first([values[n] for n in kept], feeds)):  # samples first, as the judge's
                sink.setdefault(name, []).append(value)
        step.samples(feed_rows(feeds))
    step.finish()
    return observers


def _runs_too_big(session: runtime.Session, names: list[str], model: ir.Model, dataset, run: int,
                  sizes: dict[str, float] | None = None) -> bool:
    """Whether runs of ``run`` samples copy more than ``runtime.HISTOGRAM_RUN_LIMIT`` of activations
    out: False where the declared shapes count them (histogram_run_size bounded the run), else
    measured on a run of the first ``reduction_run_size`` samples, unless ``sizes`` has every
    tensor's bytes per sample from an earlier probe (then no run; a probe adds its tensors')."""
    probe = runtime.reduction_run_size(dataset)
    if run <= probe or g.activations_declared(model):
        return False
    sizes = {} if sizes is None else sizes
    if any(n not in sizes for n in names):
        feeds = next(iter(dataset.batches(probe)))
        rows = max(feed_rows(feeds), 1)
        sizes.update((n, np.asarray(v).nbytes / rows) for n, v in zip(names, session.run(feeds, names)))
    per_sample = sum(sizes[n] for n in names)
    return per_sample * min(run, dataset.num_samples) > runtime.HISTOGRAM_RUN_LIMIT


def _input_ranges(dataset, names: list[str], batch_size: int) -> dict[str, tuple[float, float]]:
    """Finite min and max of each graph input ``names`` over the data (inputs with no finite value left out)."""
    if not names:
        return {}
    observers = {n: MinMaxObserver() for n in names}
    for feeds in dataset.batches(batch_size):
        for n in names:
            observers[n].update(feeds[n])
    return {n: o.result() for n, o in observers.items() if o.observed}
