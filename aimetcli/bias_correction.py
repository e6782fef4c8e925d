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
   per layer: the quantized (QDQ) model is run in segments that end at each layer
   output (calibration/segments.py). When segment k has run over all the data, the
   layer's per-channel mean is compared with the FP32 one, the difference goes into
   its bias *and* into the cached output, and only then does the next segment read it.

Cost: 1 FP32 pass + 1 calibration pass + 1 segmented quantized pass, each linear
in depth. Memory: one batch of activations for the FP32 and calibration passes;
the segmented pass caches, for all samples, the tensors live between two segments
(the widest cut of the graph times the number of samples; reported as
``peak_cache_bytes``). Use --num-samples to bound it.
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
from aimetcli.kernels.bias import ChannelMean, clipped_normal_mean
from aimetcli.kernels.quant import fake_quantize
from aimetcli.layers import Layer, as_layer, bias_array, bias_reason, weight_reason, write_bias
from aimetcli.passes.replace_relu6 import clip_bounds

METADATA_KEY = "aimetcli.bias_correction"
METHODS = ("empirical", "analytical", "hybrid")


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
        reason = weight_reason(layer) or bias_reason(layer, layer.weight_array() if layer.weight_array() is not None else np.zeros(0))
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
               extra_feeds: dict[str, np.ndarray] | None = None, progress=None) -> dict[str, np.ndarray]:
    present = {o.name for o in proto.graph.output}
    for name in outputs:
        if name not in present:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    session = runner.make_session(proto, optimization="basic")
    means = {name: ChannelMean() for name in outputs}
    for feeds in dataset.batches(batch_size):
        if extra_feeds:
            feeds = {**feeds, **extra_feeds}
        for name, value in zip(outputs, runner.run(session, feeds, outputs)):
            means[name].update(value)
        if progress is not None:
            progress(1)
    return {name: m.mean for name, m in means.items()}


def correct_biases(model: ir.Model, dataset, options, *, method: str = "hybrid", config_path: str | None = None,
                   batch_size: int = 32, progress=None) -> BiasCorrectionResult:
    """Correct the biases of ``model`` (FP32, modified in place) for quantization with ``options``."""
    from aimetcli.quantsim.calibrate import calibrate
    from aimetcli.quantsim.config import load_config
    from aimetcli.quantsim.insert import insert_qdq
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
    needs_data = bool(empirical) or bool(measured and dataset is not None)
    if empirical and dataset is None:
        raise AimetCliError("empirical bias correction needs --data; use --method analytical for data-free runs",
                            ErrorKind.USAGE)
    fp_means = {}
    if needs_data and dataset is not None:
        fp_means = _mean_pass(ir.serde.serialize_model(model), out_names, dataset, batch_size, progress=progress)

    encodings = calibrate(model, placement, options, dataset, batch_size, progress) if dataset is not None else None
    params = encodings.params if encodings is not None else _param_only(model, placement, options)

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

    if fp_means and encodings is not None:
        sim = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        renamed = insert_qdq(sim, encodings.activations, encodings.params)
        by_sim_name = {renamed.get(la.output.name, la.output.name): la for la in measured}
        corrections: dict[int, np.ndarray] = {}
        shifts: dict[int, float] = {}

        def on_cut(name: str, arrays: list[np.ndarray]) -> None:
            layer = by_sim_name[name]
            mean = ChannelMean()
            for a in arrays:
                mean.update(a)
            diff = fp_means[layer.output.name] - mean.mean
            shifts[id(layer.node)] = float(np.mean(np.abs(diff)))
            if id(layer.node) in analytical:
                return
            corrections[id(layer.node)] = diff
            shape = [1] * arrays[0].ndim
            shape[1] = -1
            step = diff.astype(arrays[0].dtype).reshape(shape)
            for a in arrays:
                a += step  # downstream segments see the corrected layer

        seg_runner = SegmentRunner(ir.serde.serialize_model(sim), list(by_sim_name))
        seg_runner.run(dataset.batches(batch_size), on_cut, progress)
        result.peak_cache_bytes = seg_runner.peak_bytes
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


def _param_only(model: ir.Model, placement, options):
    from aimetcli.quantsim.calibrate import param_encodings

    return param_encodings(model, placement, options)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _biases_to_inputs(proto: onnx.ModelProto, names: set[str]) -> None:
    """Turn the named float initializers into graph inputs (fed each run)."""
    keep = []
    for t in proto.graph.initializer:
        if t.name in names:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            keep.append(t)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
