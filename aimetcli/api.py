"""The library API the CLI (and the end-to-end tests) call.

Each function takes an ``onnx_ir.Model`` (modified in place) or paths, does one
step of the workflow and returns a result dataclass with ``to_json()``. No
function here prints; progress goes through an optional callback.
"""

from __future__ import annotations

import dataclasses
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


def prepare(model: ir.Model, *, simplify: bool = False) -> tuple[ir.Model, PrepareReport]:
    """Make a loaded model ready for the passes.

    Lifts Constant-node weights to initializers, optionally runs onnxsim (with its
    own BN fusion disabled, as AIMET's docs recommend; on failure we go on without
    it and say so) and infers shapes (needed to know e.g. that a MatMul is 2-D).
    """
    report = PrepareReport()
    if simplify:
        try:
            model = _simplify(model)
            report.simplified = True
        except Exception as exc:  # onnxsim fails on many exotic models; it is optional
            report.simplify_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            report.warnings.append(f"onnxsim failed ({report.simplify_error}); continuing without it")
    report.lifted_constants = LiftConstantsPass()(model).modified
    try:
        from onnx_ir.passes.common import ShapeInferencePass

        ShapeInferencePass(strict_mode=False)(model)
    except Exception as exc:
        report.shape_inference_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return model, report


def load(source: str, *, simplify: bool = False) -> tuple[ir.Model, PrepareReport]:
    loaded = model_io.load_model(source)
    return prepare(loaded.model, simplify=simplify)


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
