"""Bias correction (Nagel et al. 2019, 4.2) in one onnxruntime run, linear in depth.

AIMET's torch flavour corrects one layer at a time and runs the whole model for
each, so its cost grows with the square of depth. We instead:

1. analytical layers (``analytical``/``hybrid``): where a layer reads a folded BN
   (carried statistics) through Relu, Clip or nothing, E[x] is the clipped-normal
   mean and ``b -= (W~ - W) . E[x]`` with no data at all;
2. build the sim model quantsim would build from the result (same config, options);
3. empirical layers, in AIMET's order (each layer corrected with every earlier layer
   quantized and already corrected) without rerunning the model per layer: one pass
   of the FP32 model gives every layer output's per-channel mean over the rows of
   axis 0 (samples, or T rows a sample after a [T, N, H] -> [T*N, H] reshape) and the
   spatial axes; then one graph (correction_graph.py) runs the sim with those means as
   inputs. At every layer output the sim's mean is compared with the FP32 one; the
   difference ``d`` is added to the sim's layer output before anything downstream
   reads it, and returned. One run measures and applies every correction in
   topological order; then ``d`` goes into the biases.

The activation grids the sim uses are the ones quantsim will compute on the
*corrected* model: with min-max ranges and all the data in one run, a second copy
(FP32 weights, float activations: what quantsim calibrates on, ``calibrate.observed_model``)
runs in the same graph, corrected in step, and each grid is computed from its range in the
graph. Otherwise (other schemes, more data than one run takes) quantsim's
calibration computes the grids first, as AIMET does (or the caller hands them over:
ptq, its incumbent sim's), and quantsim's recalibration of the corrected model brings
a little of the shift back.

Cost: one FP32 pass (in small runs) and one run of one or two copies of the model
per chunk of data, linear in depth. Memory: onnxruntime's activations of those
copies for one chunk; a chunk holds as many samples as fit in 64 MB of model input
and 4 GB of the model's activations summed over its tensors (at least ``--batch-size``;
the peak is about 40% of that per copy). With one chunk
the corrections are exact as described; with several, each chunk is corrected as above
against the FP32 means of its own samples, and the chunks' corrections are averaged by
samples.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli import correction_graph
from aimetcli import graph as g
from aimetcli.graph_builder import Builder, add_outputs, expose, taken_names, values_by_name
from aimetcli.bn_stats import read_bn_stats
from aimetcli import runtime
from aimetcli.calibration.data import feed_rows
from aimetcli.correction_graph import Grid, Target
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.kernels.bias import METHODS, ChannelMean, clipped_normal_mean
from aimetcli.kernels.quant import (Encoding, QuantScheme, encoding_from_range, fake_quantize, is_unsigned_symmetric,
                                    unsigned_symmetric_encoding)
from aimetcli.layers import Layer, as_layer, bias_array, check_rewrite, write_bias
from aimetcli.passes.chains import clip_bounds

METADATA_KEY = "aimetcli.bias_correction"


@dataclass
class LayerCorrection:
    layer: str
    method: str  # analytical | empirical
    channels: int
    # mean over channels of |E[y_fp] - E[y_q]| in the quantized model with every earlier layer corrected:
    # for empirical layers before their own correction (after it, 0 by construction); for analytical
    # layers after theirs (data-free correction, measured when data is given)
    shift_before: float
    shift_after: float | None


@dataclass
class BiasCorrectionResult:
    corrected: list[LayerCorrection] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    runs: int = 0  # onnxruntime runs of the joint model (one per chunk of data)
    grids_in_run: bool = False  # activation grids computed inside the run (else calibrated first)


def _input_expectation(layer: Layer, stats, opset: int) -> tuple[np.ndarray | None, str]:
    """E[x] per input channel from BN statistics, or (None, reason)."""
    x = layer.node.inputs[0]
    producer = x.producer()
    lo, hi = -math.inf, math.inf
    if producer is not None and g.is_op(producer, "Relu"):
        lo = 0.0
        x = producer.inputs[0]
    elif producer is not None and g.is_op(producer, "Clip"):
        bounds = clip_bounds(producer, opset)
        if bounds is None:
            return None, "its input Clip has non-constant bounds"
        lo, hi = bounds
        x = producer.inputs[0]
    if x.name not in stats:
        return None, "its input has no BN statistics (not produced by a folded BN)"
    st = stats[x.name]
    return clipped_normal_mean(st.beta, st.gamma, lo, hi), ""


def _candidates(model: ir.Model, result: BiasCorrectionResult) -> list[Layer]:
    """Layers whose bias can be corrected; each gets a private bias (created when absent)."""
    graph = model.graph
    names = g.Names(model)
    layers = []
    for node in list(graph):
        layer = as_layer(node)
        if layer is None:
            continue
        rewrite = check_rewrite(layer)
        if not rewrite:
            result.skipped.append((layer.name, rewrite.reason))
            continue
        w = layer.weight_array()
        if layer.spec.bias_slot is None and not layer.input_known_2d:
            result.skipped.append((layer.name, "MatMul without a bias input whose input is not known to be 2-D"))
            continue
        write_bias(layer, graph, names, bias_array(layer, w), w.dtype)  # private, present
        layers.append(layer)
    return layers


def _mean_pass(model: ir.Model, outputs: list[str], dataset, batch_size: int, progress=None,
               policy: runtime.Policy = runtime.FOLD_CONSTANTS, channels_last: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """Per-channel means of ``outputs`` over the data (channels on axis 1, or the last axis for
    those in ``channels_last``)."""
    session = runtime.Session(expose(model, outputs), policy)
    means = {name: ChannelMean(channels_last=name in channels_last) for name in outputs}
    for feeds in dataset.batches(batch_size):
        for name, value in zip(outputs, session.run(feeds, outputs)):
            means[name].update(value)
        if progress is not None:
            progress(1)
    return {name: m.mean for name, m in means.items()}


def correct_biases(model: ir.Model, dataset, options, *, method: str = "hybrid", batch_size: int = 32,
                   progress=None, activation_grids: Mapping[str, Encoding | None] | None = None) -> BiasCorrectionResult:
    """Correct the biases of ``model`` (FP32, modified in place) for quantization with ``options``
    (its config included).

    ``activation_grids``: the activation encodings of the sim quantsim built from ``model`` (as it
    is now, before any correction) with ``options``, by tensor; None for a quantizer that sim's
    calibration dropped (``placement.revise_after_calibration``). Where the correction run does
    not compute the grids itself (``_grids_in_graph``), these are used instead of calibrating the
    sim on ``dataset`` (see :func:`_simulation`); a sim quantizer they do not cover means they are
    not that sim's, and the sim is calibrated as without them."""
    from aimetcli.quantsim.calibrate import calibration_weights, param_encodings
    from aimetcli.quantsim.placement import place_quantizers

    if method not in METHODS:
        raise AimetCliError(f"unknown bias-correction method {method!r}; use one of {', '.join(METHODS)}",
                            ErrorKind.USAGE)
    result = BiasCorrectionResult()
    layers = _candidates(model, result)
    cfg = options.config
    placement = place_quantizers(model, cfg, options)
    weight_q = {p.tensor: p for p in placement.params if p.kind == "weight"}
    stats = read_bn_stats(model)
    opset = g.opset_version(model)

    analytical: dict[int, np.ndarray] = {}
    empirical: list[Layer] = []
    for layer in layers:
        if layer.weight.name not in weight_q:
            result.skipped.append((layer.name, "its weight is not quantized by the config"))
            continue
        ex, why = (None, "method is empirical")
        if method in ("analytical", "hybrid"):
            ex, why = _input_expectation(layer, stats, opset)
        if ex is not None:
            analytical[id(layer.node)] = ex
        elif method == "analytical":
            result.skipped.append((layer.name, why))
        else:
            empirical.append(layer)

    measured = [*empirical, *(la for la in layers if id(la.node) in analytical)]
    if empirical and dataset is None:
        raise AimetCliError("empirical bias correction needs --data; use --method analytical for data-free runs",
                            ErrorKind.USAGE)
    reference = None
    if measured and dataset is not None:
        reference = calibration_weights(model, {})  # the FP32 model before any correction

    params = param_encodings(model, placement, options)

    # Analytical: b -= (W~ - W) . E[x]
    graph = model.graph
    names = g.Names(model)
    for layer in layers:
        ex = analytical.get(id(layer.node))
        if ex is None:
            continue
        w = layer.weight_array()
        err = fake_quantize(w.astype(np.float32), params[layer.weight.name]).astype(np.float64) - w.astype(np.float64)
        delta = layer.apply_to_constant(err, ex)
        write_bias(layer, graph, names, bias_array(layer, w) - delta, w.dtype)

    if reference is not None:
        # the quantization quantsim applies (after the analytical corrections), run beside the reference
        chunk = runtime.correction_run_size(model, dataset, batch_size)
        in_graph = _grids_in_graph(dataset, options, chunk)
        _describe(progress, "Correcting biases: preparing the sim")
        sim, sim_proto, float_path, grids, rounded = _simulation(model, cfg, options, dataset, batch_size, progress,
                                                                 in_graph, activation_grids)
        sources = _float_sources(sim, [la.output.name for la in measured])
        targets = [Target(la.output.name, src, _output_rank(la), la.out_channels(la.weight_array()),
                          id(la.node) not in analytical, rounded.get(la.bias.name or "") if la.bias else None)
                   for la, src in zip(measured, sources)]
        _describe(progress, "Correcting biases: FP32 means")
        fp32_means = _fp32_means(reference, targets, dataset, batch_size, chunk, progress)
        _describe(progress, f"Correcting biases: the correction run{'s' if len(fp32_means) > 1 else ''} "
                            f"({min(chunk, dataset.num_samples)} samples a run, every layer at once)")
        joint, outputs, mean_inputs, scales = correction_graph.build(sim_proto, float_path, targets, grids)
        means = [{mean_inputs[t.reference]: m[t.reference].astype(np.float32).reshape(t.mean_shape) for t in targets}
                 for m in fp32_means]
        averaged, result.runs = _run_joint(joint, {**{("d", r): n for r, n in outputs.items()},
                                                   **{("scale", r): n for r, n in scales.items()}},
                                           means, dataset, chunk, progress)
        result.grids_in_run = bool(grids)
        for layer in measured:
            diff = averaged[("d", layer.output.name)]
            if not np.all(np.isfinite(diff)):
                raise AimetCliError(f"the output of layer {layer.name!r} is NaN or Inf on the calibration data, "
                                    "so no mean shift can be measured; check the data and the model",
                                    ErrorKind.DATA)
            n = layer.out_channels(layer.weight_array())
            shift = float(np.mean(np.abs(diff)))
            if id(layer.node) in analytical:
                result.corrected.append(LayerCorrection(layer.name, "analytical", n, float("nan"), shift))
            else:
                w = layer.weight_array()
                fixed = bias_array(layer, w) + diff
                step = averaged.get(("scale", layer.output.name))
                if step is not None:  # on the grid a runtime stores it on (quantsim/bias_grid.py), exactly
                    step = step.astype(np.float32)
                    fixed = np.rint(np.divide(fixed.astype(np.float32), step, dtype=np.float32)) * step
                write_bias(layer, graph, names, fixed, w.dtype)
                result.corrected.append(LayerCorrection(layer.name, "empirical", n, shift, 0.0))
    else:
        for layer in layers:
            if id(layer.node) in analytical:
                n = layer.out_channels(layer.weight_array())
                result.corrected.append(LayerCorrection(layer.name, "analytical", n, float("nan"), None))
    return result


def _output_rank(layer: Layer) -> int:
    return layer.spec.output_rank(len(layer.weight.shape))


def _grids_in_graph(dataset, options, chunk: int) -> bool:
    """Min-max grids are computed inside the correction run when one run (of ``chunk`` samples)
    sees all the data (not with more data than a run holds, or a model whose fixed batch
    dimension splits the data into several runs)."""
    return options.scheme is QuantScheme.MIN_MAX and dataset.num_batches(chunk) == 1


def _simulation(model: ir.Model, cfg, options, dataset, batch_size: int, progress, in_graph: bool,
                known: Mapping[str, Encoding | None] | None = None):
    """The sim model quantsim would build from ``model``, and what the correction run needs of it.

    Returns (sim, a copy of it with the weights fake-quantized, the float path, grids, the
    biases rounded to a runtime's grid (:func:`_round_biases`)), both copies sharing their tensors (quantsim.calibrate.calibration_weights). With ``in_graph``, activation grids that
    the data decide are left to the correction run (placeholders here; the float path, weights
    fake-quantized, is the model they are measured on), so they follow every upstream correction
    as quantsim's calibration of the corrected model will. Otherwise the grids are calibrated
    before correcting, as AIMET does: ``known`` (correct_biases' ``activation_grids``) when it
    covers every activation quantizer of the sim, else quantsim's calibration on ``dataset``.

    Why ``known`` (ptq's incumbent sim, calibrated on every calibration sample) may stand in for
    that calibration: activation grids are observed on the FP32 weights
    (``calibrate.observed_model``), so they do not depend on the weights' grids. What they miss
    are the bias changes: the analytical corrections applied above, before the sim is built (a
    calibration here would see those), and the empirical ones (no calibration before correcting
    sees those). The sim that ptq judges and exports is quantsim's calibration of the corrected
    model on all the calibration samples, so these grids only stand in for it during the
    correction run, and the incumbent's are calibrated on the samples it is, where a calibration
    here sees the fit samples only.
    """
    from aimetcli.model_ops import clone, sim_opset, upgrade_opset
    from aimetcli.quantsim.calibrate import (calibrate, calibration_weights, non_negative_outputs, observed_model,
                                             param_encodings)
    from aimetcli.quantsim.bias_grid import LAYERS, bias_sites
    from aimetcli.quantsim.insert import insert_qdq
    from aimetcli.quantsim.placement import place_quantizers

    sim = upgrade_opset(clone(model), sim_opset(options))
    placement = place_quantizers(sim, cfg, options)
    float_path = None
    in_graph_tensors = []
    if in_graph:
        params = param_encodings(sim, placement, options)
        acts = {}
        nonneg = non_negative_outputs(sim)
        graph_inputs = {v.name for v in sim.graph.inputs}
        for a in placement.activations:
            strict = placement.strict_symmetric and a.symmetric
            fixed = a.encoding_min is not None and a.encoding_max is not None
            lo, hi = (a.encoding_min, a.encoding_max) if fixed else (-1.0, 1.0)  # else: computed in the graph
            known_min = -1.0  # what is known of the tensor's minimum without running the model
            if not fixed and a.symmetric and placement.unsigned_symmetric:  # (the data pass only when it matters)
                known_min = 0.0 if a.tensor in nonneg else _data_min(dataset, a.tensor) if a.tensor in graph_inputs \
                    else -1.0
            # AIMET's unsigned symmetric grid (in the graph: lo = 0 for a non-negative tensor). An inner
            # tensor that is non-negative only on the data (not by construction) keeps its signed grid here.
            if not fixed and is_unsigned_symmetric(a.symmetric, placement.unsigned_symmetric, known_min):
                nonneg.add(a.tensor)
                acts[a.tensor] = unsigned_symmetric_encoding(hi, a.bitwidth)
            else:
                acts[a.tensor] = encoding_from_range(lo, hi, a.bitwidth, a.symmetric, strict_symmetric=strict)
            if not fixed:
                in_graph_tensors.append(a.tensor)
        float_path = observed_model(sim)
    elif known is not None and _covers(known, placement):
        params = param_encodings(sim, placement, options)
        acts = {a.tensor: enc for a in placement.activations if (enc := known[a.tensor]) is not None}
        nonneg = set()
    else:
        encodings = calibrate(sim, placement, options, dataset, batch_size, progress)
        acts, params = encodings.activations, encodings.params
        nonneg = set()
    ranks = {v.name: len(v.shape) for v in (*sim.graph.inputs, *(o for n in sim.graph for o in n.outputs))
             if v.shape is not None}
    record = {}
    names = g.Names(sim)
    for node in list(sim.graph):  # a zero bias where correction may write one: quantsim will round it
        layer = as_layer(node)
        if layer is not None and node.op_type in LAYERS and layer.bias is None and layer.spec.bias_slot is not None:
            w = layer.weight_array()
            write_bias(layer, sim.graph, names, np.zeros(layer.out_channels(w), np.float32), w.dtype)
    sites = bias_sites(sim.graph)  # before the quantizers go in
    # weights fake-quantized in the sim's copy (exactly QDQ, tested in test_quant_kernels) rather than
    # QDQ nodes: no weight QDQ to run or fold
    insert_qdq(sim, acts, {}, record=record)
    rounded = _round_biases(sim, sites, acts, params, record)
    grids = []
    for tensor in in_graph_tensors:
        enc = acts[tensor]
        grids.append(Grid(tensor, record[tensor], enc.num_steps, enc.symmetric, tensor in nonneg, ranks.get(tensor),
                          ir.DataType.from_numpy(enc.container_dtype), enc.qmin, enc.qmax))
    return sim, calibration_weights(sim, params), float_path, grids, rounded


def _round_biases(sim: ir.Model, sites, acts, params, record) -> dict[str, tuple[str, str, str]]:
    """The biases a runtime stores as int32 (quantsim/bias_grid.py), rounded in the sim as
    quantsim will round them, their grid's scale computed from the input quantizer's scale
    value (computed in the correction run itself with in-graph grids): {bias: (its name, the
    scale's, the rounded bias's)} (``correction_graph.Target.bias_grid``)."""
    from aimetcli.quantsim.bias_grid import insert_rounding

    graph = sim.graph
    names = g.Names(sim)
    out = {}
    for site in sites:
        if site.grid(acts, params) is None or site.input not in record:
            continue
        x_scale = graph.initializers[record[site.input].scale]
        w_scale = g.add_initializer(graph, names.new(f"{site.weight}_scale_for_bias"),
                                    np.asarray(params[site.weight].scale, np.float32))
        mul = ir.Node("", "Mul", [x_scale, w_scale], name=names.new(f"{site.bias}_bias_scale"))
        scale = mul.outputs[0]
        scale.name = names.new(f"{site.bias}_bias_scale")
        scale.type, scale.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(list(w_scale.shape or []))
        bias = graph.initializers[site.bias]
        reader = next(iter(bias.uses())).node
        graph.insert_before(reader, [mul])
        rounded_value = insert_rounding(graph, names, bias, scale)
        out[site.bias] = (site.bias, scale.name or "", rounded_value.name or "")
    return out


def _covers(known: Mapping[str, Encoding | None], placement) -> bool:
    """Whether ``known`` has a grid (or None: dropped) for every activation quantizer of
    ``placement`` (those with a range fixed by the config included: their grids are fixed)."""
    return all(a.tensor in known for a in placement.activations)


def _data_min(dataset, name: str) -> float:
    return min((float(np.min(b[name])) for b in dataset.batches(256) if b[name].size), default=0.0)


def _fp32_means(reference: ir.Model, targets: list[Target], dataset, batch_size: int, chunk: int,
                progress) -> list[dict[str, np.ndarray]]:
    """Per chunk of ``chunk`` samples (the correction runs' split of the data): the per-channel means
    (float64) of the target layers' outputs in the FP32 model over that chunk.

    A channel's mean is over every position that belongs to it: all rows of axis 0 and all spatial
    positions. The rows are counted per run, not taken for samples: a recognizer that reshapes
    [T, N, H] to [T*N, H] before its classifier Gemm has T rows a sample there (the sim's mean in
    the correction graph is a ReduceMean over the same rows, so the two compare like with like).
    Every row of a tensor holds as many spatial positions, so the mean of the per-row spatial
    means is the mean over all positions.

    Each correction run compares the sim with the FP32 model on the same samples: with FP32 means
    over all the data instead, every run would add its own sampling deviation from the overall
    mean to every layer output of its sim, and the layers downstream would be measured on that.
    Only per-sample spatial means (GlobalAveragePool, on onnxruntime's blocked layout) leave the
    session, which runs small slices of each chunk (see runtime.reduction_run_size).
    """
    from aimetcli.quantsim.calibrate import ProgressSteps

    graph = reference.graph  # the caller's copy, extended here
    graph.outputs.clear()
    taken = {o.name for n in graph for o in n.outputs} | {i.name for i in graph.inputs}
    b = Builder(graph, taken_names(graph))
    values = values_by_name(graph)
    outputs = {}
    exposed = []
    for i, t in enumerate(targets):
        value = values[t.reference]
        if t.rank > 2:
            name = f"aimetcli_bc/spatial_mean_{i}"
            while name in taken:
                name += "_"
            value = b.node("GlobalAveragePool", [value], name)
        outputs[t.reference] = value.name
        exposed.append(value)
    add_outputs(graph, exposed)
    session = runtime.Session(reference, runtime.MEASURE)
    names = list(dict.fromkeys(outputs.values()))
    run = min(batch_size, runtime.reduction_run_size(dataset))
    step = ProgressSteps(dataset, batch_size, progress)
    per_chunk = []
    for feeds in dataset.batches(chunk):
        n = feed_rows(feeds)
        # a model with a fixed batch dimension gets chunks of exactly that size: run them whole
        slices = [feeds] if dataset.fixed_batch is not None or n <= run else [
            {k: v[s:s + run] for k, v in feeds.items()} for s in range(0, n, run)]
        sums: dict[str, np.ndarray] = {}
        rows: dict[str, int] = {}
        for part in slices:
            for name, value in zip(names, session.run(part, names)):
                v = np.asarray(value, np.float64)
                # spatial mean, summed over the rows of axis 0, which need not be samples
                sums[name] = sums.get(name, 0.0) + v.reshape(v.shape[0], v.shape[1], -1).mean(axis=2).sum(axis=0)
                rows[name] = rows.get(name, 0) + v.shape[0]
            step.samples(feed_rows(part))
        per_chunk.append({ref: sums[name] / max(rows[name], 1) for ref, name in outputs.items()})
    step.finish()
    return per_chunk


def _describe(progress, text: str) -> None:
    """Tell a progress display that can say so (``progress.describe``) which step runs now: the
    correction run is one onnxruntime run per chunk, counted as one step when it ends."""
    describe = getattr(progress, "describe", None)
    if describe is not None:
        describe(text)


def _run_joint(joint: ir.Model, outputs: Mapping[Hashable, str], means: list[dict[str, np.ndarray]], dataset,
               chunk: int, progress) -> tuple[dict[Hashable, np.ndarray], int]:
    """Sample-weighted mean of each output (by key: the ``d`` of a layer, its bias grid's scale)
    over the chunks of the data (one chunk: AIMET's estimate exactly).

    ``means``: per chunk, the FP32 means of that chunk's samples (graph input name -> array)."""
    session = runtime.Session(joint, runtime.SIMULATE_FUSED)
    names = list(outputs.values())
    totals = {name: None for name in names}
    count = runs = 0
    for feeds, chunk_means in zip(dataset.batches(chunk), means, strict=True):
        runs += 1
        n = feed_rows(feeds)
        for name, value in zip(names, session.run({**feeds, **chunk_means}, names)):
            v = np.asarray(value, np.float64).reshape(-1) * n
            totals[name] = v if totals[name] is None else totals[name] + v
        count += n
        if progress is not None:
            progress(1)
    return {ref: totals[d] / max(count, 1) for ref, d in outputs.items()}, runs


def progress_steps(model: ir.Model, dataset, batch_size: int, options) -> int:
    """Progress steps a data-driven ``correct_biases`` reports: the FP32 pass's batches, calibration
    batches (unless the grids are computed in the correction run), and the correction runs."""
    if dataset is None:
        return 0
    chunk = runtime.correction_run_size(model, dataset, batch_size)
    batches = dataset.num_batches(batch_size)
    return batches + dataset.num_batches(chunk) + (0 if _grids_in_graph(dataset, options, chunk) else batches)


def _float_sources(model: ir.Model, names: list[str]) -> list[str]:
    """The float tensor behind each of ``names`` in a QDQ model (graph outputs keep their name on
    the DQ side)."""
    values = {v.name: v for n in model.graph for v in n.outputs}
    out = []
    for name in names:
        v = values.get(name)
        while v is not None and v.producer() is not None and g.is_op(v.producer(), "Clip", "DequantizeLinear",
                                                                        "QuantizeLinear"):
            v = v.producer().inputs[0]
        out.append(v.name if v is not None else name)
    return out
