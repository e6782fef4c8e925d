"""The library API the CLI (and the end-to-end tests) call.

Each function takes an ``onnx_ir.Model`` (modified in place) or paths, does one
step of the workflow and returns a result dataclass with ``to_json()``. No
function here prints; progress goes through an optional callback.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from aimetcli import graph as g
from aimetcli import model_io
from aimetcli.passes.fold_batchnorm import FoldBatchNormPass, FoldBatchNormResult
from aimetcli.passes.lift_constants import LiftConstantsPass


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "model"}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return obj.item()
    return obj


@dataclass
class PrepareReport:
    lifted_constants: bool = False
    simplified: bool = False
    simplify_error: str | None = None
    shape_inference_error: str | None = None
    upcast_from: list[str] = field(default_factory=list)  # float16/bfloat16 computed in float32 now
    warnings: list[str] = field(default_factory=list)


def _simplify(model: ir.Model) -> ir.Model:
    import onnxsim

    proto = ir.serde.serialize_model(model)
    simplified, ok = onnxsim.simplify(proto, skip_fuse_bn=True, certify=False)
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    out = ir.serde.deserialize_model(simplified)
    out.metadata_props.update(model.metadata_props)
    return out


def prepare(model: ir.Model, *, simplify: bool = False, float32: bool = False) -> tuple[ir.Model, PrepareReport]:
    """Make a loaded model ready for the passes.

    Lifts Constant-node weights to initializers, optionally runs onnxsim (with its
    own BN fusion disabled, as AIMET's docs recommend; on failure we go on without
    it and say so) and infers shapes (needed to know e.g. that a MatMul is 2-D).
    ``float32``: a model that computes in float16/bfloat16 is upcast to float32
    (passes/float16_to_float32.py), as the quantizing commands need.
    """
    report = PrepareReport()
    if simplify:
        try:
            model = _simplify(model)
            report.simplified = True
        except Exception as exc:  # onnxsim fails on many exotic models; it is optional
            report.simplify_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            report.warnings.append(f"onnxsim failed ({report.simplify_error}); continuing without it")
    if model.ir_version < 4:
        # IR 3 lists every initializer as a graph input; the passes add initializers that are not,
        # which only IR >= 4 allows (the inputs listed stay as they are)
        model.ir_version = 4
    report.lifted_constants = LiftConstantsPass()(model).modified
    g.free_unknown_dims(model)  # legacy converters' -1/0 sizes: unknown
    if float32:
        from aimetcli.passes.float16_to_float32 import Float16ToFloat32Pass

        upcast = Float16ToFloat32Pass()(model)
        if upcast.modified:
            report.upcast_from = upcast.upcast_from
            kinds = " and ".join(upcast.upcast_from)
            report.warnings.append(
                f"the model computes in {kinds}: quantizing its float32 version ({upcast.tensors} tensors "
                f"upcast); the models and encodings written are float32, as QNN/SNPE converters take them")
    if report.simplified or not model.meta.get(model_io.SHAPES_META, False):
        try:
            from onnx_ir.passes.common import ShapeInferencePass

            ShapeInferencePass(strict_mode=False)(model)
        except Exception as exc:
            report.shape_inference_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return model, report


def load(source: str, *, simplify: bool = False, float32: bool = False) -> tuple[ir.Model, PrepareReport]:
    loaded = model_io.load_model(source)
    return prepare(loaded.model, simplify=simplify, float32=float32)


def require_float_model(model: ir.Model) -> None:
    """Refuse what quantsim, bias correction and ptq cannot start from: a model that is already
    quantized, named as what it is (integer operators: quantize_dynamic or QOperator; QDQ nodes,
    which would be doubled: a sim, which export takes, or quantize_static), or one that computes
    in float16/bfloat16."""
    from aimetcli.errors import AimetCliError, ErrorKind

    integer_ops = g.integer_op_types(model)
    if integer_ops:
        shown = ", ".join(integer_ops[:4]) + (", ..." if len(integer_ops) > 4 else "")
        raise AimetCliError(
            f"the model is already quantized with integer operators ({shown}: an onnxruntime quantize_dynamic "
            "or QOperator output); quantize the float model it came from", ErrorKind.INPUT)
    quantized = g.quantized_nodes(model)
    if quantized:
        raise AimetCliError(
            f"the model is already quantized ({quantized} QuantizeLinear/DequantizeLinear nodes: a quantsim or "
            "quantize_static output); start from the float model (a sim goes to 'aimetcli export')",
            ErrorKind.INPUT)
    require_float32(model)


def require_float32(model: ir.Model) -> None:
    """Refuse a model that computes in float16/bfloat16: quantsim would place no quantizer on it."""
    from aimetcli.errors import AimetCliError, ErrorKind
    from aimetcli.passes.float16_to_float32 import low_precision_types

    found = low_precision_types(model)
    if found:
        kinds = " and ".join(sorted(t.name.lower() for t in found))
        raise AimetCliError(
            f"the model computes in {kinds}, and quantizers go on float32 tensors only; load it with "
            "api.load(path, float32=True) (the command line does this) to quantize its float32 version",
            ErrorKind.INPUT)


@dataclass
class FoldBnSummary:
    folded: list
    skipped: list
    remaining_bn: int
    seconds: float

    def to_json(self) -> dict:
        return _jsonable(self)


def fold_bn(model: ir.Model) -> tuple[FoldBatchNormResult, FoldBnSummary]:
    """Fold every foldable BatchNormalization; the model is modified in place."""
    start = time.perf_counter()
    result: FoldBatchNormResult = FoldBatchNormPass()(model)
    remaining = sum(1 for n in model.graph.all_nodes() if g.is_op(n, "BatchNormalization"))
    summary = FoldBnSummary(result.folded, result.skipped, remaining, time.perf_counter() - start)
    return result, summary


@dataclass
class LayerRanges:
    layer: str
    op: str
    weight: str
    channels: int
    ranges: list[float]  # max |w| per output channel
    spread: float  # max/min of the non-zero ranges


def weight_ranges(model: ir.Model) -> list[LayerRanges]:
    """Per-output-channel weight ranges of every layer with constant float weights."""
    from aimetcli.kernels import cle
    from aimetcli.layers import as_layer, weight_reason

    rows = []
    for node in model.graph:
        layer = as_layer(node)
        if layer is None or weight_reason(layer):
            continue
        w = layer.weight_array()
        r = layer.per_out_channel_abs_max(w)
        rows.append(LayerRanges(layer.name, node.op_type, layer.weight.name, int(r.size), r.tolist(),
                                cle.range_spread(r)))
    return rows


@dataclass
class EqualizeOptions:
    replace_relu6: bool = True  # Clip(0, a) -> Relu inside scaling chains
    high_bias_fold: bool = True
    cross_layer_scaling: bool = True  # False: only fold BN and replace ReLU6 (a reference for exactness tests)


@dataclass
class EqualizeSummary:
    folded_bn: int
    relu6_replaced: int
    chains: list[list[str]]
    scaling_sets: int
    iterations: int
    bias_absorbed: list
    stops: list
    ranges_before: list[LayerRanges]
    ranges_after: list[LayerRanges]
    seconds: float
    bias_skipped: list = field(default_factory=list)  # (layer, why its bias was not absorbed)

    @property
    def median_spread_before(self) -> float:
        return _median([r.spread for r in self.ranges_before])

    @property
    def median_spread_after(self) -> float:
        return _median([r.spread for r in self.ranges_after])

    def to_json(self) -> dict:
        doc = _jsonable(self)
        for key in ("ranges_before", "ranges_after"):
            for row in doc[key]:
                row.pop("ranges")
        doc["median_spread_before"] = self.median_spread_before
        doc["median_spread_after"] = self.median_spread_after
        return doc


def _median(xs: list[float]) -> float:
    import numpy as np

    return float(np.median(xs)) if xs else 1.0


def equalize(model: ir.Model, options: EqualizeOptions | None = None) -> EqualizeSummary:
    """AIMET's equalize_model on ONNX: BN fold, ReLU6 -> ReLU, cross-layer scaling, high-bias fold."""
    from aimetcli.passes.cross_layer_scaling import CrossLayerScalingPass
    from aimetcli.passes.high_bias_fold import HighBiasFoldPass
    from aimetcli.passes.replace_relu6 import ReplaceRelu6Pass

    options = options or EqualizeOptions()
    start = time.perf_counter()
    fold_result, _ = fold_bn(model)
    before = weight_ranges(model)  # after folding: what cross-layer scaling starts from
    relu6 = ReplaceRelu6Pass()(model) if options.replace_relu6 else None
    cls_result = CrossLayerScalingPass(relu6_replaced=options.replace_relu6)(model) if options.cross_layer_scaling \
        else None
    absorption = HighBiasFoldPass()(model) if options.high_bias_fold else None
    after = weight_ranges(model)
    return EqualizeSummary(
        folded_bn=len(fold_result.folded),
        relu6_replaced=len(relu6.replaced) if relu6 else 0,
        chains=cls_result.chains if cls_result else [],
        scaling_sets=len(cls_result.sets) if cls_result else 0,
        iterations=cls_result.iterations if cls_result else 0,
        bias_absorbed=absorption.absorbed if absorption else [],
        stops=cls_result.stops if cls_result else [],
        ranges_before=before,
        ranges_after=after,
        seconds=time.perf_counter() - start,
        bias_skipped=absorption.skipped if absorption else [],
    )


# ----------------------------------------------------------------------------------
# quantsim
# ----------------------------------------------------------------------------------
def upgrade_opset(model: ir.Model, target: int) -> ir.Model:
    """The model at ``target`` ai.onnx opset (onnx's version converter), prepared again."""
    import onnx

    from aimetcli.errors import AimetCliError, ErrorKind

    current = g.opset_version(model)
    if current >= target:
        return model
    # the converter copies every tensor it is given (8 s for VGG19's 548 MB): give it the big
    # weights' dims and types only, and hand the converted graph the same tensors back
    with model_io.big_tensors_set_aside(model, numpy_only=False) as taken:
        proto = ir.serde.serialize_model(model)
    big = taken.tensors
    try:
        converted = onnx.version_converter.convert_version(proto, target)
    except Exception as exc:
        raise AimetCliError(
            f"cannot convert the model from opset {current} to {target}, which quantsim needs "
            f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}); re-export it at opset {target} or newer",
            ErrorKind.UNSUPPORTED,
        ) from exc
    if target >= 21 and converted.ir_version < 10:
        converted.ir_version = 10
    out = ir.serde.deserialize_model(converted)
    for name, value in out.graph.initializers.items():
        if name in big and value.const_value is not None and value.const_value.shape == big[name].shape:
            value.const_value = big[name]
    out.metadata_props.update(model.metadata_props)
    out, _ = prepare(out)
    return out


@dataclass
class QuantsimSummary:
    options: dict
    activation_quantizers: int
    param_quantizers: int
    skipped: list
    opset: int
    samples: int
    batches: int
    calibration_seconds: float
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return _jsonable(self)


def quantsim(model: ir.Model, dataset, options, *, config_path: str | None = None, batch_size: int = 32,
             progress=None, check_loads: bool = True):
    """Place quantizers, calibrate them with onnxruntime and insert QDQ nodes.

    Returns (sim model, Encodings, QuantsimSummary). ``model`` may be replaced when
    its opset must be raised for the QDQ nodes (13, or 21 for 16-bit). ``check_loads``:
    make sure stock onnxruntime loads the sim (a caller that runs it right away, as ptq
    does, learns that anyway).
    """
    from aimetcli.quantsim.config import load_config

    start = time.perf_counter()
    require_float_model(model)
    cfg = load_config(config_path)
    warnings = []
    bns = sum(1 for n in model.graph if g.is_op(n, "BatchNormalization"))
    if bns:
        warnings.append(f"the model still has {bns} BatchNormalization; run fold-bn first to simulate what "
                        "runtimes execute")
    mismatch = bias_correction_mismatch(model, options, cfg.source)
    if mismatch:
        warnings.append(mismatch)
    model, encodings, placement, calib_seconds = simulate(model, cfg, options, dataset, batch_size, progress)
    from aimetcli.adaround import frozen_mismatch

    if frozen := frozen_mismatch(model, placement):
        warnings.append(frozen)
    warnings += placement.warnings
    for tensor, count in encodings.nonfinite.items():
        warnings.append(f"{count} NaN/Inf values in tensor {tensor!r} were ignored during calibration")
    # what we write must run on stock onnxruntime: check it loads (no optimizations: cheap)
    if check_loads and model_io.tensor_bytes(model) < model_io.IN_MEMORY_LIMIT:
        from aimetcli.calibration import runner

        runner.session_of(model, optimization="none")
    from aimetcli.export import embed

    embed(model, encodings_json(encodings, options, "1.0.0"), encodings.params, options.as_record(cfg.source),
          placement.skipped)
    summary = QuantsimSummary(
        options=options.as_record(cfg.source),
        activation_quantizers=len(encodings.activations),
        param_quantizers=len(encodings.params),
        skipped=[{"tensor": t, "reason": r} for t, r in placement.skipped],
        opset=g.opset_version(model),
        samples=dataset.num_samples,
        batches=dataset.num_batches(batch_size),
        calibration_seconds=calib_seconds,
        seconds=time.perf_counter() - start,
        warnings=warnings,
    )
    return model, encodings, summary


def sim_opset(options) -> int:
    """The opset a sim model with ``options`` needs (13; 21 for 16-bit QDQ)."""
    from aimetcli.quantsim.insert import SIM_OPSET, WIDE_OPSET

    return WIDE_OPSET if max(options.param_bw, options.act_bw) > 8 else SIM_OPSET


def simulate(model: ir.Model, cfg, options, dataset, batch_size: int, progress=None):
    """quantsim's core: raise the opset, place quantizers, calibrate, insert QDQ.

    Returns (sim model, Encodings, Placement, calibration seconds). ``model`` is modified
    in place unless its opset had to be raised (then a converted copy is the sim).
    """
    from aimetcli.quantsim.calibrate import calibrate
    from aimetcli.quantsim.insert import insert_qdq
    from aimetcli.quantsim.placement import place_quantizers

    model = upgrade_opset(model, sim_opset(options))
    placement = place_quantizers(model, cfg, options)
    t0 = time.perf_counter()
    encodings = calibrate(model, placement, options, dataset, batch_size, progress)
    calib_seconds = time.perf_counter() - t0
    insert_qdq(model, encodings.activations, encodings.params)
    return model, encodings, placement, calib_seconds


def quantizer_args(options, encodings):
    """AIMET's quantizer_args, from what was actually computed (the config may decide symmetry)."""
    from aimetcli.encodings import QuantizerArgs, aimet_quant_scheme_name

    params = list(encodings.params.values())
    acts = list(encodings.activations.values())

    def symmetric(e) -> bool:  # an offset-0 grid is also what AIMET's unsigned symmetric gives
        return e.symmetric or not e.offset.any()

    return QuantizerArgs(
        activation_bitwidth=options.act_bw,
        param_bitwidth=options.param_bw,
        per_channel=any(e.per_channel for e in params),
        activation_symmetric=all(map(symmetric, acts)) if acts else bool(options.act_symmetric),
        param_symmetric=all(map(symmetric, params)) if params else options.param_symmetric is not False,
        quant_scheme=aimet_quant_scheme_name(options.scheme),
    )


def tensor_encodings(encodings) -> list:
    from aimetcli.encodings import TensorEncoding

    return [TensorEncoding(name, enc, "activation") for name, enc in sorted(encodings.activations.items())] + [
        TensorEncoding(name, enc, "param") for name, enc in sorted(encodings.params.items())]


def encodings_json(encodings, options, version: str) -> str:
    from aimetcli import encodings as enc_io
    from aimetcli.errors import AimetCliError, ErrorKind

    try:
        return enc_io.dumps(tensor_encodings(encodings), version=version,
                            quantizer_args=quantizer_args(options, encodings))
    except ValueError as exc:  # e.g. 2.0.0 has no field for a 6-bit grid
        raise AimetCliError(f"encodings {version} cannot hold these encodings ({exc}); use --encoding-version 1.0.0",
                            ErrorKind.USAGE) from exc


# ----------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------
@dataclass
class OutputComparison:
    output: str
    sqnr_db: float
    max_abs_error: float


@dataclass
class EvaluateSummary:
    models: list[str]
    samples: int
    top1: list[float | None]
    comparisons: list[OutputComparison] = field(default_factory=list)
    top1_agreement: float | None = None
    seconds: float = 0.0
    scored_output: str | None = None  # the output top-1 and first_sqnr_db read (score_output)

    @property
    def first_sqnr_db(self) -> float | None:
        """SQNR (dB) of the second model's scored output against the first's, if comparable."""
        for c in self.comparisons:
            if c.output == self.scored_output:
                return c.sqnr_db
        return None

    def to_json(self) -> dict:
        return _jsonable(self)


def sqnr_db(reference, test) -> float:
    from aimetcli.kernels.energy import energies

    e = energies(reference, test)
    return sqnr_of_energies(float(e.signal.sum()), float(e.noise.sum()))


def sqnr_of_energies(signal: float, noise: float) -> float:
    """10 log10(signal / noise) in dB: inf without noise, -inf without signal."""
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10 * math.log10(signal / noise))


def model_outputs(model: ir.Model, dataset, *, batch_size: int = 64, optimization: str = "none",
                  progress=None, outputs: list[str] | None = None) -> list:
    """Every output of ``model`` (or those named in ``outputs``) over the data (one array per
    output, samples concatenated).

    A caller that compares several models with the same reference (ptq, after each stage) runs
    the reference once and passes its outputs to ``evaluate``."""
    return _run_models([model], [optimization], dataset, batch_size, progress, outputs)[0]


def _run_models(models: list[ir.Model], levels: list[str], dataset, batch_size: int, progress,
                outputs: list[str] | None = None) -> list[list]:
    """Each model's outputs over the data, the models run batch by batch side by side."""
    import numpy as np

    from aimetcli.calibration import runner

    if not models:
        return []
    sessions = [runner.session_of(m, optimization=lvl) for m, lvl in zip(models, levels)]
    collected: list[list[list[np.ndarray]]] = [[] for _ in sessions]
    for feeds in dataset.batches(batch_size):
        for i, sess in enumerate(sessions):
            collected[i].append(runner.run(sess, feeds, outputs))
        if progress is not None:
            progress(1)
    return [[_joined([b[k] for b in batches]) for k in range(len(batches[0]))] if batches else []
            for batches in collected]


def _joined(parts: list):
    """The batches of one output as one array (the array itself when there is one batch)."""
    import numpy as np

    return parts[0] if len(parts) == 1 and isinstance(parts[0], np.ndarray) else np.concatenate(parts)


def evaluate(models: list[ir.Model], dataset, *, batch_size: int = 64, optimization: str | list[str] = "none",
             names: list[str] | None = None, progress=None, reference_outputs: list | None = None) -> EvaluateSummary:
    """Top-1 of each model (when the data has labels); for two models, how far apart they are.

    ``reference_outputs``: the first model's outputs on this data (``model_outputs``), when the
    caller has them already; that model is then not run again."""
    start = time.perf_counter()
    levels = [optimization] * len(models) if isinstance(optimization, str) else list(optimization)
    skip = 1 if reference_outputs is not None and models else 0
    outputs = ([reference_outputs] if skip else []) + _run_models(models[skip:], levels[skip:], dataset, batch_size,
                                                                  progress)
    summary = compare_outputs(outputs, dataset.labels, names or [f"model{i}" for i in range(len(models))],
                              dataset.num_samples, [o.name for o in models[0].graph.outputs] if models else [])
    summary.seconds = time.perf_counter() - start
    return summary


def score_output(outputs: list) -> int | None:
    """Index of the output that top-1 and the headline SQNR read: the first floating-point
    output with a class axis (2-D or more; e.g. the logits of a model whose first output is its
    int64 argmax label), else the first floating-point output, else None."""
    floats = [k for k, o in enumerate(outputs) if getattr(o, "dtype", None) is not None and o.dtype.kind == "f"]
    return next((k for k in floats if outputs[k].ndim >= 2), floats[0] if floats else None)


def _predictions(logits):
    """Class predictions: the argmax over axis 1 (the class axis of [N, C] logits and the channel
    axis of NCHW ones), [N] for a classifier (trailing axes of size 1 dropped), [N, H, W] for a
    dense predictor such as a segmentation net (agreement is then counted per position)."""
    if logits.ndim < 2:
        return None
    pred = logits.argmax(axis=1)
    if pred.ndim > 1 and all(d == 1 for d in pred.shape[1:]):
        pred = pred.reshape(pred.shape[0])
    return pred


def compare_outputs(outputs: list[list], labels, names: list[str], samples: int,
                    output_names: list[str]) -> EvaluateSummary:
    """Top-1 of each model's scored output (:func:`score_output`) against ``labels`` (if any);
    for two models, SQNR and max abs error per floating-point output and how often their top-1
    agree."""
    import numpy as np

    from aimetcli.kernels.energy import energies

    k_scored = score_output(outputs[0]) if outputs and outputs[0] else None
    top1: list[float | None] = []
    preds = []
    for outs in outputs:
        logits = outs[k_scored] if k_scored is not None and k_scored < len(outs) else None
        pred = _predictions(logits) if logits is not None else None
        preds.append(pred)
        if labels is not None and pred is not None and pred.ndim == 1:
            top1.append(float(np.mean(pred == labels[: len(pred)]) * 100.0))
        else:
            top1.append(None)
    summary = EvaluateSummary(names, samples, top1)
    if k_scored is not None and k_scored < len(output_names):
        summary.scored_output = output_names[k_scored]
    if len(outputs) == 2:
        for k, name in enumerate(output_names):
            if k >= min(len(outputs[0]), len(outputs[1])):
                break
            a, b = outputs[0][k], outputs[1][k]
            if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape \
                    or a.dtype.kind != "f" or b.dtype.kind != "f":  # sequences, integers: no SQNR
                continue
            e = energies(a, b)
            summary.comparisons.append(OutputComparison(name, sqnr_of_energies(float(e.signal.sum()),
                                                                               float(e.noise.sum())), e.max_abs))
        if preds[0] is not None and preds[1] is not None:
            summary.top1_agreement = float(np.mean(preds[0] == preds[1]) * 100.0)
    return summary


# ----------------------------------------------------------------------------------
# bias correction
# ----------------------------------------------------------------------------------
@dataclass
class BiasCorrectSummary:
    method: str
    options: dict
    corrected: list
    skipped: list
    runs: int  # onnxruntime runs of the correction model (one per chunk of data)
    grids_in_run: bool  # activation grids computed in the run, after every upstream correction
    samples: int
    seconds: float

    @property
    def mean_shift_before(self) -> float:
        import numpy as np

        vals = [c.shift_before for c in self.corrected if c.method == "empirical"]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def mean_shift_after(self) -> float:
        import numpy as np

        vals = [c.shift_after for c in self.corrected if c.method == "empirical" and c.shift_after is not None]
        return float(np.mean(vals)) if vals else float("nan")

    def to_json(self) -> dict:
        doc = _jsonable(self)
        doc["skipped"] = [{"layer": a, "reason": b} for a, b in self.skipped]
        for key in ("mean_shift_before", "mean_shift_after"):
            v = getattr(self, key)
            doc[key] = None if v != v else v
        for row in doc["corrected"]:
            for key in ("shift_before", "shift_after"):
                if row[key] is not None and row[key] != row[key]:
                    row[key] = None
        return doc


def bias_correct(model: ir.Model, dataset, options, *, method: str = "hybrid", config_path: str | None = None,
                 batch_size: int = 32, progress=None) -> BiasCorrectSummary:
    """Correct biases for the quantization quantsim applies with ``options``; records them in the model."""
    import json

    from aimetcli.bias_correction import METADATA_KEY, correct_biases
    from aimetcli.quantsim.config import load_config

    start = time.perf_counter()
    require_float_model(model)
    result = correct_biases(model, dataset, options, method=method, config_path=config_path,
                            batch_size=batch_size, progress=progress)
    record = options.as_record(load_config(config_path).source)
    model.metadata_props[METADATA_KEY] = json.dumps({"method": method, "options": record}, sort_keys=True)
    return BiasCorrectSummary(method, record, result.corrected, result.skipped, result.runs, result.grids_in_run,
                              dataset.num_samples if dataset is not None else 0, time.perf_counter() - start)


def adaround(model: ir.Model, dataset, options, **kw):
    """AdaRound the model's weights in place (``aimetcli.adaround.adaround``: the keywords and result)."""
    from aimetcli.adaround import adaround as run

    return run(model, dataset, options, **kw)


def bias_correction_mismatch(model: ir.Model, options, cfg_source: str) -> str | None:
    """A warning when the model was bias-corrected for other quantization options."""
    import json

    from aimetcli.bias_correction import METADATA_KEY

    text = model.metadata_props.get(METADATA_KEY)
    if not text:
        return None
    try:
        recorded = json.loads(text)["options"]
    except (ValueError, KeyError, TypeError):
        return None
    now = options.as_record(cfg_source)
    diff = [k for k in sorted(now) if recorded.get(k) != now[k]]
    if not diff:
        return None
    parts = ", ".join(f"{k} {recorded.get(k)!r} -> {now[k]!r}" for k in diff)
    return f"the model's biases were corrected for other quantization options ({parts}); rerun bias-correct with these"


def clone(model: ir.Model) -> ir.Model:
    """A copy of the model that shares its big weights instead of copying them (a serialization
    round trip of the rest). Shared numpy arrays are made read-only, so that no pass scales one
    in place under the other model (passes copy what they cannot write)."""
    import numpy as np

    with model_io.big_tensors_set_aside(model, numpy_only=False) as taken:
        copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    for name, tensor in taken.tensors.items():
        value = copy.graph.initializers.get(name)
        if value is not None:
            raw = getattr(tensor, "raw", None)
            if isinstance(raw, np.ndarray):
                raw.flags.writeable = False
            value.const_value = tensor
    return copy


# ptq, the whole recommended flow, lives in aimetcli/ptq_flow.py; its names are part of this API
from aimetcli.ptq_flow import (  # noqa: E402, F401  (ptq_flow calls back into this module)
    KeepVerdict, PtqSummary, Stage, bias_correction_verdict, equalization_verdict, keep_verdict, ptq,
    scheme_candidates,
)
