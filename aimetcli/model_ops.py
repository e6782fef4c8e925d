"""Model-level helpers every step shares: load and prepare a model, accept what a caller hands
in (a path, an ``onnx.ModelProto`` or an onnx-ir model), refuse what quantizing cannot start
from, raise the opset, and copy a model cheaply.

Nothing here runs a technique; the steps (aimetcli/steps/, ptq_flow, export) are built on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union, cast

import onnx_ir as ir

from aimetcli import big_tensors, model_io
from aimetcli import graph as g
from aimetcli.bn_stats import carry_bn_stats
from aimetcli.passes.lift_constants import LiftConstantsPass

if TYPE_CHECKING:
    import onnx

# What a step accepts as its model: a path ('-' is stdin), a protobuf, or an onnx-ir model.
ModelSource = Union[str, "os.PathLike[str]", "onnx.ModelProto", ir.Model]


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
    _carry_metadata(model, out)
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
        from aimetcli.passes.float16_to_float32 import Float16ToFloat32Pass, Float16ToFloat32Result

        upcast = cast(Float16ToFloat32Result, Float16ToFloat32Pass()(model))
        if upcast.modified:
            report.upcast_from = upcast.upcast_from
            kinds = " and ".join(upcast.upcast_from)
            report.warnings.append(
                f"the model computes in {kinds}: quantizing its float32 version ({upcast.tensors} tensors "
                f"upcast); the models and encodings written are float32, as QNN/SNPE converters take them")
    if report.simplified or not model.meta.get(model_io.SHAPES_META, False):
        _infer_shapes(model, report)
    if g.shapes_through_onnx_ml(model):  # onnx infers no ai.onnx.ml op's shape, nor the layers' after them
        _infer_shapes(model, report)
    return model, report


def _infer_shapes(model: ir.Model, report: PrepareReport) -> None:
    """onnx's shape inference, in place; its failure goes to the report's first line, not up."""
    from onnx_ir.passes.common import ShapeInferencePass

    try:
        ShapeInferencePass(strict_mode=False)(model)
    except Exception as exc:
        report.shape_inference_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def load(source: str, *, simplify: bool = False, float32: bool = False) -> tuple[ir.Model, PrepareReport]:
    """The model at ``source`` (a path or '-'), read (model_io.load_model) and prepared (:func:`prepare`)."""
    loaded = model_io.load_model(source)
    return prepare(loaded.model, simplify=simplify, float32=float32)


def as_model(source: ModelSource, *, float32: bool = False, copy: bool = False) -> ir.Model:
    """The onnx-ir model a step works on. An ``ir.Model`` is used as it is (the step rewrites it
    in place, as a pass does), or with ``copy`` a :func:`clone` of it (for steps that return a new
    model and leave their input alone: quantsim, export; the clone keeps the model's in-memory
    ``meta``, such as how it was loaded, so it is saved as the original would be). A path or an
    ``onnx.ModelProto`` is loaded and prepared (:func:`prepare`; ``float32``: a float16/bfloat16
    model is upcast, as the quantizing commands do), a new model either way; the step's result
    then carries the model it made (``summary.model``). A protobuf whose tensors are external
    data: pass its path, which locates them."""
    if isinstance(source, ir.Model):
        if not copy:
            return source
        own = clone(source)
        own.meta.update(source.meta)
        return own
    if isinstance(source, (str, os.PathLike)):
        return load(os.fspath(source), float32=float32)[0]
    if hasattr(source, "SerializeToString") and hasattr(source, "graph"):  # onnx.ModelProto
        return prepare(ir.serde.deserialize_model(source), float32=float32)[0]
    raise TypeError(f"a model is a path, an onnx.ModelProto or an onnx_ir.Model, not {type(source).__name__}")


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


def upgrade_opset(model: ir.Model, target: int) -> ir.Model:
    """The model at ``target`` ai.onnx opset (onnx's version converter), prepared again."""
    import onnx

    from aimetcli.errors import AimetCliError, ErrorKind

    current = g.opset_version(model)
    if current >= target:
        return model
    # the converter copies every tensor it is given (8 s for VGG19's 548 MB): give it the big
    # weights' dims and types only, and hand the converted graph the same tensors back
    with big_tensors.big_tensors_set_aside(model, numpy_only=False) as taken:
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
    _carry_metadata(model, out)
    out, _ = prepare(out)
    return out


def sim_opset(options) -> int:
    """The opset a sim model with ``options`` needs (13; 21 for 16-bit QDQ)."""
    from aimetcli.quantsim.insert import SIM_OPSET, WIDE_OPSET

    return WIDE_OPSET if options.max_bitwidth() > 8 else SIM_OPSET


def clone(model: ir.Model) -> ir.Model:
    """A copy of the model (onnx-ir's clone: new graphs, nodes and values) that shares its
    tensors (initializers, Constant nodes' values) instead of copying them. Shared numpy arrays
    are made read-only, so that no pass scales one in place under the other model (passes copy
    what they cannot write). 4-5x faster than the serialization round trip it replaces (session
    29: 7 against 36 ms on PP-OCRv6 det small; ptq clones every sim it builds)."""
    import numpy as np

    copy = model.clone(deep_copy=True)
    for graph in (model.graph, *model.graph.subgraphs()):
        tensors = [v.const_value for v in graph.initializers.values()]
        tensors += [a.value for n in graph for a in n.attributes.values() if a.type == ir.AttributeType.TENSOR]
        for tensor in tensors:
            raw = getattr(tensor, "raw", None)
            if isinstance(raw, np.ndarray):
                raw.flags.writeable = False
    carry_bn_stats(model, copy)
    return copy


def _carry_metadata(source: ir.Model, dest: ir.Model) -> None:
    """Give ``dest``, a copy of ``source`` made by a converter, ``source``'s metadata: the saved
    entries and the in-memory BN statistics (bn_stats.py)."""
    dest.metadata_props.update(source.metadata_props)
    carry_bn_stats(source, dest)
