"""Bias correction (Nagel et al. 2019, 4.2) at a cost that grows linearly with depth.

AIMET's torch flavour corrects one layer at a time and runs the whole model for
each, so its cost grows with the square of depth. We instead:

1. run the FP32 model once over the data, keeping a streaming per-channel mean of
   every layer's output (sums over N and spatial axes; one batch in memory);
2. compute the quantizers quantsim would use (same config, options and data);
3. analytical layers (``analytical``/``hybrid``): where a layer reads a folded BN
   (carried statistics) through Relu, Clip or nothing, E[x] is the clipped-normal
   mean and ``b -= (W~ - W) . E[x]`` with no data at all;
4. empirical layers, exactly in AIMET's order (each layer corrected with every
   earlier layer quantized and already corrected) but without rerunning the model
   per layer: the model (weights fake-quantized) runs in segments that end at each
   layer output and each quantized tensor (calibration/segments.py), along two
   paths: float activations (what quantsim calibrates on) and quantized activations
   (fake-quantized in numpy, bit-exact with QuantizeLinear/DequantizeLinear). When
   a segment has run over all the data, a layer output's per-channel mean on the
   quantized path is compared with the FP32 model's and the difference goes into
   its bias and into both cached paths; a quantized tensor gets its encoding from
   the float path, after every upstream correction, just as quantsim will compute
   it on the corrected model. So ``bias-correct`` then ``quantsim`` with the same
   options and data leaves (almost) no shift.

Cost: 1 FP32 pass + 1 segmented pass over two paths, linear in depth. Memory: the
tensors live between two segments, for all samples and both paths (the widest cut
of the graph times the number of samples; ``peak_cache_bytes``). Use --num-samples
to bound it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.bn_stats import read_bn_stats
from aimetcli.calibration import runner
from aimetcli.calibration.segments import SegmentRunner
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.kernels.bias import METHODS, ChannelMean, clipped_normal_mean
from aimetcli.kernels.quant import fake_quantize, fake_quantize_finite
from aimetcli.layers import Layer, as_layer, bias_array, rewrite_reason, write_bias
from aimetcli.passes.replace_relu6 import clip_bounds

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
    peak_cache_bytes: int = 0


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
        reason = rewrite_reason(layer)
        if reason:
            result.skipped.append((layer.name, reason))
            continue
        w = layer.weight_array()
        if layer.kind == "matmul":
            shape = node.inputs[0].shape
            if shape is None or len(shape) != 2:
                result.skipped.append((layer.name, "MatMul without a bias input whose input is not known to be 2-D"))
                continue
        write_bias(layer, graph, names, bias_array(layer, w), w.dtype)  # private, present
        layers.append(layer)
    return layers


def _mean_pass(proto: onnx.ModelProto, outputs: list[str], dataset, batch_size: int,
               progress=None, optimization: str = "basic") -> dict[str, np.ndarray]:
    present = {o.name for o in proto.graph.output}
    for name in outputs:
        if name not in present:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    session = runner.make_session(proto, optimization=optimization)
    means = {name: ChannelMean() for name in outputs}
    for feeds in dataset.batches(batch_size):
        for name, value in zip(outputs, runner.run(session, feeds, outputs)):
            means[name].update(value)
        if progress is not None:
            progress(1)
    return {name: m.mean for name, m in means.items()}


def correct_biases(model: ir.Model, dataset, options, *, method: str = "hybrid", config_path: str | None = None,
                   batch_size: int = 32, progress=None) -> BiasCorrectionResult:
    """Correct the biases of ``model`` (FP32, modified in place) for quantization with ``options``."""
    from aimetcli.quantsim.calibrate import param_encodings
    from aimetcli.quantsim.config import load_config
    from aimetcli.quantsim.placement import place_quantizers

    if method not in METHODS:
        raise AimetCliError(f"unknown bias-correction method {method!r}; use one of {', '.join(METHODS)}",
                            ErrorKind.USAGE)
    result = BiasCorrectionResult()
    layers = _candidates(model, result)
    cfg = load_config(config_path)
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
    out_names = [la.output.name for la in measured]
    if empirical and dataset is None:
        raise AimetCliError("empirical bias correction needs --data; use --method analytical for data-free runs",
                            ErrorKind.USAGE)
    fp_means = {}
    if measured and dataset is not None:
        fp_means = _mean_pass(ir.serde.serialize_model(model), out_names, dataset, batch_size, progress=progress)

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

    if fp_means:
        corrections, shifts, peak = _sequential_empirical(model, placement, params, options, dataset, batch_size,
                                                          measured, analytical, fp_means, progress)
        result.peak_cache_bytes = peak
        for layer in empirical:
            w = layer.weight_array()
            write_bias(layer, graph, names, bias_array(layer, w) + corrections.get(id(layer.node), 0.0), w.dtype)
        for layer in measured:
            n = layer.out_channels(layer.weight_array())
            is_analytical = id(layer.node) in analytical
            before = shifts.get(id(layer.node), float("nan"))
            result.corrected.append(LayerCorrection(
                layer.name, "analytical" if is_analytical else "empirical", n,
                float("nan") if is_analytical else before, before if is_analytical else 0.0))
    else:
        for layer in layers:
            if id(layer.node) in analytical:
                n = layer.out_channels(layer.weight_array())
                result.corrected.append(LayerCorrection(layer.name, "analytical", n, float("nan"), None))
    return result


def _sequential_empirical(model, placement, params, options, dataset, batch_size, measured, analytical,
                          fp_means, progress):
    """Empirical correction in AIMET's layer order, with the activation encodings quantsim will compute.

    Two paths run through the same segments (one ORT session per segment): the *float*
    path (fake-quantized weights, float activations: what quantsim calibrates on) and the
    *quantized* path (the same, with every activation quantizer applied in numpy, bit-exact
    with QuantizeLinear/DequantizeLinear). Segments end at every layer output and every
    quantized tensor. At a layer output, the quantized path's per-channel mean is compared
    with the FP32 model's and the difference is added to both paths (and later the bias).
    At a quantized tensor, its encoding is computed from the float path over all the data,
    *after* every upstream correction, exactly as quantsim will compute it on the corrected
    model, and the quantized path is fake-quantized with it.
    """
    from aimetcli.calibration.observers import make_observer, observe_encoding
    from aimetcli.quantsim.calibrate import calibration_weights_proto

    by_output = {la.output.name: la for la in measured}
    acts = {a.tensor: a for a in placement.activations}
    proto = calibration_weights_proto(model, params)
    graph_inputs = {i.name for i in proto.graph.input}
    corrections: dict[int, np.ndarray] = {}
    shifts: dict[int, float] = {}

    def quantize_path(tensor: str, float_arrays: list[np.ndarray], quant_arrays: list[np.ndarray]) -> None:
        a = acts[tensor]
        if a.encoding_min is not None and a.encoding_max is not None:
            from aimetcli.kernels.quant import encoding_from_range

            enc = encoding_from_range(a.encoding_min, a.encoding_max, a.bitwidth, a.symmetric)
        else:
            obs = make_observer(options.scheme)
            for arr in float_arrays:
                obs.update(arr)
            enc = observe_encoding(obs, options.scheme, a.bitwidth, a.symmetric, percentile=options.percentile,
                                   strict_symmetric=placement.strict_symmetric and a.symmetric)
        for i, arr in enumerate(quant_arrays):
            quant_arrays[i] = fake_quantize_finite(arr, enc).astype(arr.dtype, copy=False)

    def on_cut(name: str, arrays: dict[str, list[np.ndarray]]) -> None:
        layer = by_output.get(name)
        if layer is not None:
            mean = ChannelMean()
            for a in arrays["quantized"]:
                mean.update(a)
            diff = fp_means[name] - mean.mean
            shifts[id(layer.node)] = float(np.mean(np.abs(diff)))
            if id(layer.node) not in analytical:
                corrections[id(layer.node)] = diff
                shape = [1] * arrays["quantized"][0].ndim
                shape[1] = -1
                for path_arrays in arrays.values():
                    step = diff.astype(path_arrays[0].dtype).reshape(shape)
                    for a in path_arrays:
                        a += step  # downstream segments see the corrected layer
        if name in acts:
            quantize_path(name, arrays["float"], arrays["quantized"])

    # Every sample is cached between segments anyway, so runs can take bigger chunks than
    # --batch-size: fewer onnxruntime calls (about 32 MB of model input per run).
    first = next(iter(dataset.batches(1)), {})
    per_sample = max(1, sum(a.nbytes for a in first.values()))
    chunk = max(batch_size, (32 << 20) // per_sample)
    float_batches = [dict(b) for b in dataset.batches(chunk)]
    quant_batches = [dict(b) for b in float_batches]
    for tensor in acts:
        if tensor in graph_inputs:
            arrays = [b[tensor] for b in quant_batches]
            quantize_path(tensor, [b[tensor] for b in float_batches], arrays)
            for b, arr in zip(quant_batches, arrays):
                b[tensor] = arr
    cuts = [t for t in acts if t not in graph_inputs] + list(by_output)
    seg_runner = SegmentRunner(proto, cuts, optimization="all")  # no QDQ nodes: fusions are safe
    seg_runner.run({"float": float_batches, "quantized": quant_batches}, on_cut, progress)
    return corrections, shifts, seg_runner.peak_bytes


def _float_source(model: ir.Model, name: str) -> str:
    """The float tensor behind ``name`` in a QDQ model (graph outputs keep their name on the DQ side)."""
    values = {v.name: v for n in model.graph for v in n.outputs}
    v = values.get(name)
    while v is not None and v.producer() is not None and g.is_op(v.producer(), "Clip", "DequantizeLinear",
                                                                    "QuantizeLinear"):
        v = v.producer().inputs[0]
    return v.name if v is not None else name


def output_shift(reference: ir.Model, sim: ir.Model, dataset, *, batch_size: int = 32) -> dict[str, float]:
    """Per layer of ``reference``: mean over channels of |E[y_sim] - E[y_reference]| on the data.

    ``sim`` is a quantsim model of ``reference`` (or of a bias-corrected copy of it): this is the
    shift bias correction exists to remove, measured against the uncorrected FP32 model.
    """
    names = [la.output.name for n in reference.graph if (la := as_layer(n)) is not None]
    ref = _mean_pass(ir.serde.serialize_model(reference), names, dataset, batch_size)
    sim_names = [_float_source(sim, n) for n in names]
    # no graph optimizations: onnxruntime's rewrites of QDQ graphs are not the simulation
    q = _mean_pass(ir.serde.serialize_model(sim), sim_names, dataset, batch_size, optimization="none")
    return {n: float(np.mean(np.abs(ref[n] - q[s]))) for n, s in zip(names, sim_names)}
