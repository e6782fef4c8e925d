"""What users ship: FP32 model + AIMET encodings, and a deployable QDQ model.

From a sim model (written by quantsim, which embeds its encodings) or from an FP32
model plus an encodings file, ``export`` writes into a directory:

* ``model.onnx``      FP32, every QuantizeLinear/DequantizeLinear removed: the weights
                      are the original FP32 ones (the sim model keeps them);
* ``model.encodings`` AIMET encodings (0.6.1 / 1.0.0 / 2.0.0) naming tensors of model.onnx;
* ``model_qdq.onnx``  weights stored as integer initializers feeding DequantizeLinear,
                      activations as QDQ pairs: onnxruntime runs integer kernels;
* ``report.json``     what was quantized (bitwidth, symmetry, range) and what was not, and why.

Deployable weights: onnxruntime's x86 u8s8 kernels without VNNI can saturate 16-bit
intermediate sums (see shared facts), so by default the QDQ model stores symmetric
8-bit weights as uint8 with zero point 128: the same grid and the same integers
shifted by 128, computed by the u8u8 kernels that do not saturate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.encodings_read import loads
from aimetcli.encodings_types import EncodingsError, EncodingsFile, QuantizerArgs, TensorEncoding
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.kernels.quant import Encoding, encoding_from_range, fake_quantize
from aimetcli.model_ops import ModelSource, as_model, clone, upgrade_opset
from aimetcli.quantsim.insert import insert_qdq, is_grid_node
from aimetcli.targets import onnxruntime_notes, onnxruntime_session_options

QUANTSIM_METADATA_KEY = "aimetcli.quantsim"


@dataclass
class Embedded:
    """What export writes from: the encodings with what the file or the sim says beside them."""

    encodings: list[TensorEncoding]
    options: dict
    skipped: list[dict]
    quantizer_args: QuantizerArgs | None = None
    excluded_layers: tuple[str, ...] = ()


def embed(model: ir.Model, encodings_doc: dict, params: dict[str, Encoding], options: dict,
          skipped: list[tuple[str, str]]) -> None:
    """Record quantsim's encodings (the 1.0.0 document), per-channel axes, options and skips in
    the sim model.

    :func:`read_embedded` reads them back; ``export`` needs nothing else. One line of JSON
    (``json``'s C encoder; an indented dump runs in Python, 10x slower on per-channel encodings).
    """
    model.metadata_props[QUANTSIM_METADATA_KEY] = json.dumps({
        "options": options,
        "encodings": encodings_doc,
        "axes": {name: enc.axis for name, enc in sorted(params.items()) if enc.axis is not None},
        "skipped": [{"tensor": t, "reason": r} for t, r in skipped],
    }, sort_keys=True, allow_nan=False)


def read_embedded(model: ir.Model) -> Embedded | None:
    text = model.metadata_props.get(QUANTSIM_METADATA_KEY)
    if not text:
        return None
    doc = json.loads(text)
    parsed = loads(json.dumps(doc["encodings"]))
    axes = doc.get("axes", {})
    encs = [TensorEncoding(te.name, _with_axis(te.encoding, axes.get(te.name)), te.kind) for te in parsed.encodings]
    return Embedded(encs, doc.get("options", {}), doc.get("skipped", []), parsed.quantizer_args,
                    parsed.excluded_layers)


def _with_axis(enc: Encoding, axis: int | None) -> Encoding:
    if axis is None or not enc.per_channel:
        return enc
    return Encoding(enc.bitwidth, enc.symmetric, enc.scale, enc.offset, axis=axis)


def _sole(value: ir.Value, op: str) -> ir.Node | None:
    node = g.sole_consumer(value)
    return node if node is not None and g.is_op(node, op) else None


def _equals(value: ir.Value | None, expected: np.ndarray) -> bool:
    array = g.constant(value)
    return array is not None and array.size == expected.size and np.array_equal(
        np.asarray(array, np.float32).reshape(-1), np.asarray(expected, np.float32).reshape(-1))


def _ours(node: ir.Node, enc: Encoding | None, bounds: list[tuple[int, np.ndarray]]) -> bool:
    """Whether a Clip/Max/Min after a DequantizeLinear is quantsim's narrow-grid one.

    Marked ones are (quantsim/insert.py). Sims written before the mark are recognised by the one
    pattern they had: the tensor's encoding needs a clip, and the node's bound inputs are exactly
    that grid's dequantized bounds. A sim always puts its own clamp first, right after the
    DequantizeLinear, so a model's clamp is never taken for it when the encoding needs one; and
    when the encoding needs none, there is nothing to remove.
    """
    if is_grid_node(node):
        return True
    return enc is not None and enc.needs_clip and all(_equals(node.inputs[i] if i < len(node.inputs) else None, b)
                                                      for i, b in bounds)


def _encoding_of(q: ir.Node, after: list[ir.Node], encodings: dict[str, Encoding]) -> Encoding | None:
    """The encoding of the tensor a QuantizeLinear quantizes: its input's name, or, for a graph
    output (whose float value was renamed), the name of the chain's output."""
    names = [q.inputs[0].name] + [n.outputs[0].name for n in after if n.outputs[0].is_graph_output()]
    return next((encodings[n] for n in names if n in encodings), None)


def _quantizer_chain(q: ir.Node, encodings: dict[str, Encoding]) -> list[ir.Node] | None:
    """QuantizeLinear -> DequantizeLinear, then quantsim's Clip (activations) or Max -> Min (weights)."""
    dq = _sole(q.outputs[0], "DequantizeLinear")
    if dq is None:
        return None
    chain = [q, dq]
    clip = _sole(dq.outputs[0], "Clip")
    mx = _sole(dq.outputs[0], "Max")
    mn = _sole(mx.outputs[0], "Min") if mx is not None else None
    if clip is not None:
        enc = _encoding_of(q, [clip], encodings)
        lo, hi = enc.dequantized_bounds() if enc is not None else (None, None)
        if _ours(clip, enc, [(1, lo), (2, hi)]):
            chain.append(clip)
    elif mx is not None and mn is not None:
        enc = _encoding_of(q, [mn], encodings)
        lo, hi = enc.dequantized_bounds() if enc is not None else (None, None)
        if _ours(mx, enc, [(1, lo)]) and _ours(mn, enc, [(1, hi)]):
            chain += [mx, mn]
    return chain


def strip_qdq(model: ir.Model, encodings: list[TensorEncoding]) -> int:
    """Remove quantsim's QDQ nodes in place: the sim model becomes the FP32 model. Returns nodes removed.

    ``encodings`` are the sim's (:func:`read_embedded`); they tell sims written before quantsim
    marked its narrow-grid nodes apart from the model's own clamps (:func:`_ours`).
    """
    from aimetcli.quantsim.bias_grid import strip_rounding

    by_name = {te.name: te.encoding for te in encodings}
    graph = model.graph
    removed = strip_rounding(graph)  # biases rounded to a runtime's grid: float again
    for node in list(graph):  # integers stored in the model (32-bit biases): back to their float values
        src = node.inputs[0] if g.is_op(node, "DequantizeLinear") else None
        if src is None or not src.is_initializer():
            continue
        scale = np.asarray(g.constant(node.inputs[1]), np.float32)
        zp = g.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        q = src.const_value.numpy().astype(np.int64)
        shape = [1] * q.ndim
        if scale.ndim == 1 and q.ndim:
            shape[node.attributes.get_int("axis", 1)] = -1
        z = 0 if zp is None else np.asarray(zp, np.int64).reshape(shape if np.ndim(zp) == 1 else ())
        g.set_constant(src, ((q - z).astype(np.float32) * scale.reshape(shape if scale.ndim == 1 else ())))
        params = [v for v in node.inputs[1:] if v is not None]
        node.outputs[0].replace_all_uses_with(src, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        g.remove_unused_initializers(graph, params)
        removed += 1
    for node in list(graph):
        if not g.is_op(node, "QuantizeLinear") or node.graph is None:
            continue
        chain = _quantizer_chain(node, by_name)
        if chain is None:
            continue
        final = chain[-1].outputs[0]
        x = node.inputs[0]
        was_output = final.is_graph_output()
        name = final.name
        final.replace_all_uses_with(x, replace_graph_outputs=True)
        params = [v for n in chain for v in n.inputs[1:] if v is not None]
        graph.remove(list(reversed(chain)), safe=True)
        if was_output:
            x.name = name
        g.remove_unused_initializers(graph, params)
        removed += len(chain)
    model.metadata_props.pop(QUANTSIM_METADATA_KEY, None)
    return removed


def check_names(model: ir.Model, encodings: list[TensorEncoding]) -> None:
    """Every encoding must name a tensor of the model, exactly."""
    names = {v.name for v in model.graph.inputs} | set(model.graph.initializers)
    for node in model.graph:
        names.update(v.name for v in node.outputs)
    for te in encodings:
        if te.name not in names:
            raise AimetCliError(
                f"encoding for {te.name!r} names no tensor of the model; export the encodings for this model",
                ErrorKind.CONFIG)


# How much more error than a weight's own min-max grid an encoding may give it before it is taken
# for another model version's. Range schemes that clip (tf-enhanced, percentile) leave weights
# outside their grid by design, but they pick the range for a low error: on the sample models
# (W8, per tensor and per channel) they stay within 1.6 dB of min-max's error, while encodings
# of the folded and equalized model applied to the folded one (and the reverse) are 12-46 dB worse.
MISFIT_MARGIN_DB = 6.0


@dataclass(frozen=True)
class WeightFit:
    """How a weight lies on its encoding's grid.

    ``outside``: the share of its values more than half a step outside the grid's range
    [dequantized qmin, dequantized qmax] (per channel where per-channel), which quantization
    moves by more than half a step. ``db_worse``: how much larger (dB) its quantization error
    is than on its own min-max grid of the same kind (0 when nothing lies outside).
    """

    tensor: str
    outside: float
    db_worse: float

    @property
    def misfit(self) -> bool:
        return self.outside > 0 and self.db_worse > MISFIT_MARGIN_DB

    def message(self) -> str:
        return (f"weight {self.tensor!r} lies {100 * self.outside:.2g}% of its values outside its encoding's range "
                f"(quantization error {self.db_worse:.0f} dB above its own range's): the encodings belong to "
                "another version of the model")


def _error_db_above_own_range(w: np.ndarray, enc: Encoding) -> float:
    """10 log10 of the squared error of ``w`` on ``enc`` over that on the min-max grid of ``w``
    with the same bitwidth, symmetry and granularity."""
    axes = tuple(i for i in range(w.ndim) if i != enc.axis) if enc.per_channel else None
    own = encoding_from_range(w.min(axis=axes), w.max(axis=axes), enc.bitwidth, enc.symmetric,
                              strict_symmetric=enc.strict_symmetric, axis=enc.axis if enc.per_channel else None,
                              min_range=0.0)
    w64 = np.asarray(w, np.float64)
    given = float(np.sum((w64 - fake_quantize(w, enc)) ** 2))
    best = float(np.sum((w64 - fake_quantize(w, own)) ** 2))
    return float("inf") if best == 0 else 10 * np.log10(max(given, 1e-300) / best)


def weight_fits(model: ir.Model, params: dict[str, Encoding]) -> list[WeightFit]:
    """:class:`WeightFit` of every param encoding whose tensor is a float initializer, the most
    outside first. A channel count that differs from the encoding's is refused here."""
    fits = []
    for name, enc in params.items():
        w = g.constant(model.graph.initializers.get(name))
        if w is None or not g.is_float_dtype(w) or not w.size:
            continue
        w = np.asarray(w, np.float32)
        if enc.per_channel and (w.ndim <= enc.axis or w.shape[enc.axis] != enc.scale.size):
            channels = w.shape[enc.axis] if w.ndim > enc.axis else "no"
            raise AimetCliError(
                f"weight {name!r} has {channels} channels on axis {enc.axis} but its encoding {enc.scale.size}: "
                "the encodings belong to another version of the model; give the model they were computed on",
                ErrorKind.CONFIG)
        lo, hi = enc.dequantized_bounds()
        half = enc.scale.astype(np.float64) * (0.5 + 1e-6)  # float32 rounding at the boundary is no misfit
        outside = (w < enc.broadcast(lo - half, w.ndim)) | (w > enc.broadcast(hi + half, w.ndim))
        share = float(np.count_nonzero(outside)) / w.size
        fits.append(WeightFit(name, share, _error_db_above_own_range(w, enc) if share else 0.0))
    return sorted(fits, key=lambda f: -f.outside)


def check_weights_fit(model: ir.Model, params: dict[str, Encoding], *, force: bool) -> list[str]:
    """Refuse encodings computed on another version of the model (e.g. on the folded and equalized
    one), naming the weight with the most values outside its range; ``force``: a warning instead.
    Returns the warnings."""
    worst = next((f for f in weight_fits(model, params) if f.misfit), None)
    if worst is None:
        return []
    if not force:
        raise AimetCliError(f"{worst.message()}; give the model they were computed on, or --force", ErrorKind.CONFIG)
    return [f"{worst.message()}; exporting them anyway (--force)"]


def split(encodings: list[TensorEncoding]) -> tuple[dict[str, Encoding], dict[str, Encoding]]:
    acts = {te.name: te.encoding for te in encodings if te.kind == "activation"}
    params = {te.name: te.encoding for te in encodings if te.kind == "param"}
    return acts, params


def fill_axes(model: ir.Model, params: dict[str, Encoding]) -> dict[str, Encoding]:
    """Per-channel param encodings read from 0.6.1/1.0.0 files carry no axis: take it from the layer."""
    from aimetcli.layers import as_layer

    out = dict(params)
    for node in model.graph:
        for idx, value in enumerate(node.inputs):
            if value is None or value.name not in out:
                continue
            enc = out[value.name]
            if enc.per_channel and enc.axis is None:
                layer = as_layer(node) if idx == 1 else None
                axis = 0 if idx != 1 else None if layer is None else layer.spec.per_channel_axis(
                    layer.groups, len(value.shape) if value.shape else 0)
                if axis is None:
                    raise AimetCliError(f"cannot tell the channel axis of per-channel encoding {value.name!r}",
                                        ErrorKind.UNSUPPORTED)
                out[value.name] = _with_axis(enc, axis)
    return out


def deployable(model: ir.Model, acts: dict[str, Encoding], params: dict[str, Encoding],
               *, unsigned_weights: bool = True) -> ir.Model:
    """A QDQ copy of the FP32 ``model`` for onnxruntime (see the module docstring)."""
    from aimetcli.quantsim.insert import required_opset

    qdq = upgrade_opset(clone(model), required_opset([*acts.values(), *params.values()]))
    insert_qdq(qdq, acts, params, store_integers=True)
    for key in [k for k in qdq.metadata_props if k.startswith("aimetcli.")]:
        del qdq.metadata_props[key]  # BN statistics and records are for our passes, not for deployment
    if unsigned_weights:
        _weights_to_uint8(qdq)
    return qdq


def deployable_of_sim(sim: ir.Model, *, unsigned_weights: bool = True) -> ir.Model:
    """The model_qdq.onnx :func:`export` writes for the quantsim model ``sim`` (left as it is), in
    memory: what onnxruntime deploys, to be scored with its optimizations (ptq's budget check)."""
    model = as_model(sim, copy=True)
    acts, params = split(_source(model, None).encodings)
    return deployable(model, acts, fill_axes(model, params), unsigned_weights=unsigned_weights)


def _weights_to_uint8(model: ir.Model) -> None:
    """int8 weights with zero point 0 -> uint8 with zero point 128: same grid, no u8s8 saturation."""
    for node in model.graph:
        if not g.is_op(node, "DequantizeLinear"):
            continue
        w = node.inputs[0]
        if not w.is_initializer() or w.const_value.dtype != ir.DataType.INT8:
            continue
        zp = node.inputs[2]
        z = zp.const_value.numpy()
        if np.any(z != 0) or len(zp.uses()) != 1:
            continue
        g.set_constant(w, (w.const_value.numpy().astype(np.int16) + 128).astype(np.uint8))
        g.set_constant(zp, np.full(z.shape, 128, np.uint8))


def report(model_name: str, encodings: list[TensorEncoding], skipped: list[dict], options: dict) -> dict:
    rows = []
    for te in sorted(encodings, key=lambda t: (t.kind, t.name)):
        e = te.encoding
        rows.append({
            "tensor": te.name, "kind": te.kind, "bitwidth": e.bitwidth, "symmetric": e.symmetric,
            "per_channel": e.per_channel,
            "min": float(np.min(e.min)), "max": float(np.max(e.max)),
        })
    return {"model": model_name, "options": options, "quantized": rows, "not_quantized": skipped}


def load_encodings_file(path: str, model: ir.Model) -> EncodingsFile:
    """The encodings file at ``path`` read against ``model``'s tensors (refused with the reason)."""
    p = Path(path)
    if not p.is_file():
        raise AimetCliError(f"--encodings {path}: no such file", ErrorKind.CONFIG)
    try:
        parsed = loads(p.read_bytes(), param_names=set(model.graph.initializers))
    except EncodingsError as exc:
        raise AimetCliError(f"--encodings {path}: {exc}", ErrorKind.CONFIG) from exc
    return parsed


def set_batch_size(model: ir.Model, batch: int) -> None:
    """Give the model static batch shapes, in place: dim 0 of every input whose dim 0 is dynamic (a
    name, unknown, or a legacy size <= 0) becomes ``batch``, and shapes are inferred again, so the
    outputs' and every intermediate value's batch dim follow (converters such as QNN's want them
    static). Where inference stops short, a dim named as an input's batch dim was (the same name
    is the same size) becomes ``batch`` too. Other dynamic dims stay as they are. An input that
    fixes dim 0 to another size is refused.
    """
    from onnx_ir.passes.common import ShapeInferencePass

    dynamic = []
    for value in model.graph.inputs:
        if value.is_initializer() or value.shape is None or len(value.shape) == 0:
            continue
        first = value.shape[0]
        if isinstance(first, int) and first > 0:
            if first != batch:
                raise AimetCliError(f"--batch-size {batch}: input {value.name!r} fixes its batch dim to {first}; "
                                    f"export without --batch-size, or give --batch-size {first}", ErrorKind.USAGE)
            continue
        dynamic.append(value)
    if not dynamic:
        return
    symbols = {v.shape[0].value for v in dynamic if isinstance(v.shape[0], ir.SymbolicDim) and v.shape[0].value}
    for value in dynamic:
        value.shape = ir.Shape([batch, *value.shape.dims[1:]])
    declared = {value: value.shape for value in model.graph.outputs}
    for node in model.graph:  # inferred afresh: a stale symbolic batch dim would be kept
        for value in node.outputs:
            value.shape = None
    ShapeInferencePass(strict_mode=False)(model)
    for value, shape in declared.items():  # where inference stopped short, what was declared
        if shape is not None and (value.shape is None or len(value.shape) != len(shape)):
            value.shape = shape
        elif shape is not None:
            value.shape = ir.Shape([i if isinstance(i, int) else d for i, d in zip(value.shape.dims, shape.dims)])
    for node in model.graph:
        for value in node.outputs:
            if value.shape is not None and any(isinstance(d, ir.SymbolicDim) and d.value in symbols
                                               for d in value.shape.dims):
                value.shape = ir.Shape([batch if isinstance(d, ir.SymbolicDim) and d.value in symbols else d
                                        for d in value.shape.dims])


@dataclass
class ExportSummary:
    directory: str
    files: list[str]
    encodings_version: str
    activation_encodings: int
    param_encodings: int
    fp32_bytes: int
    qdq_bytes: int
    unsigned_weights: bool
    batch_size: int | None = None
    warnings: list[str] = field(default_factory=list)
    session_options: dict[str, str] = field(default_factory=dict)  # targets.onnxruntime_session_options


def _source(model: ir.Model, encodings_path: str | None) -> Embedded:
    """The encodings to export: the file's for an FP32 model, else the sim's own (its QDQ nodes
    are stripped here, so ``model`` becomes the FP32 model)."""
    if encodings_path is not None:
        parsed = load_encodings_file(encodings_path, model)
        return Embedded(parsed.encodings, {}, [], parsed.quantizer_args, parsed.excluded_layers)
    embedded = read_embedded(model)
    if embedded is None:
        raise AimetCliError("the model holds no aimetcli quantsim encodings; export a model written by "
                            "'aimetcli quantsim' or pass --encodings FILE", ErrorKind.USAGE)
    strip_qdq(model, embedded.encodings)
    return embedded


def export(model: ModelSource, outdir: str, *, encodings_path: str | None = None, version: str = "1.0.0",
           unsigned_weights: bool = True, model_name: str = "model", batch_size: int | None = None,
           force: bool = False, target: str = "generic") -> ExportSummary:
    """Write model.onnx, model.encodings, model_qdq.onnx and report.json into ``outdir`` (atomically).

    ``encodings_path``: encodings for the FP32 ``model``, refused when its weights do not fit them
    (:func:`check_weights_fit`; ``force``: a warning). ``batch_size``: static shapes
    (:func:`set_batch_size`). model.encodings carries the quantizer_args of the sim or the file.
    ``target``: refuse encodings that runtime cannot run (:func:`aimetcli.targets.check_export`).
    ``model``: a path, an ``onnx.ModelProto`` or an onnx-ir model, left as it is (a sim's QDQ
    nodes are stripped from a copy, :func:`model_ops.clone`).
    """
    from aimetcli import encodings_write, model_io

    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise AimetCliError(f"{outdir}: exists and is not a directory; give a directory for -o", ErrorKind.OUTPUT)
    if not out.exists() and not out.parent.exists():
        raise AimetCliError(f"{outdir}: parent directory {out.parent} does not exist; create it first",
                            ErrorKind.OUTPUT)
    model = as_model(model, copy=True)
    source = _source(model, encodings_path)
    fp32, encodings = model, source.encodings
    if batch_size is not None:
        set_batch_size(fp32, batch_size)
    check_names(fp32, encodings)
    acts, params = split(encodings)
    params = fill_axes(fp32, params)
    if target != "generic":
        from aimetcli.targets import check_export

        check_export(fp32, target, params, acts)
    warnings = check_weights_fit(fp32, params, force=force) if encodings_path is not None else []
    warnings += onnxruntime_notes(fp32, acts, params)
    fixed = [TensorEncoding(te.name, params.get(te.name, te.encoding) if te.kind == "param" else te.encoding, te.kind)
             for te in encodings]
    try:
        enc_text = encodings_write.dumps(fixed, version=version, quantizer_args=source.quantizer_args,
                                         excluded_layers=source.excluded_layers)
    except ValueError as exc:
        raise AimetCliError(f"encodings {version} cannot hold these encodings ({exc}); use --encoding-version 1.0.0",
                            ErrorKind.USAGE) from exc
    qdq = deployable(fp32, acts, params, unsigned_weights=unsigned_weights)
    out.mkdir(exist_ok=True)  # only now that nothing can fail before the files are staged
    names: list[str] = []
    with model_io.staged_dir(out) as tmp:
        names += model_io.write_model_file(fp32, tmp / f"{model_name}.onnx")
        names += model_io.write_model_file(qdq, tmp / f"{model_name}_qdq.onnx")
        (tmp / f"{model_name}.encodings").write_text(enc_text)
        doc = report(f"{model_name}.onnx", fixed, source.skipped, source.options)
        (tmp / "report.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        names += [f"{model_name}.encodings", "report.json"]
        sizes = {n: (tmp / n).stat().st_size for n in names}
        model_io.commit_staged(tmp, out, names)
    return ExportSummary(str(out), sorted(names), version, len(acts), len(params),
                         sizes[f"{model_name}.onnx"], sizes[f"{model_name}_qdq.onnx"], unsigned_weights,
                         batch_size, warnings, onnxruntime_session_options(fp32, acts, params))
