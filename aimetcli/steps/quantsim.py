"""quantsim as a facade step: place quantizers, calibrate them, insert QDQ nodes, and the
encodings file that goes with the sim.

The work is aimetcli/quantsim/'s (placement decides, calibrate computes, insert writes); this
step checks the model, raises its opset, records what it did in the sim (export reads it back)
and sums it up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from aimetcli import graph as g
from aimetcli import model_io
from aimetcli.calibration.data import DataSource, as_dataset
from aimetcli.model_ops import ModelSource, as_model, require_float_model, sim_opset, upgrade_opset
from aimetcli.options import QuantOptions, RunOptions
from aimetcli.records import jsonable

if TYPE_CHECKING:
    from aimetcli.quantsim.observations import SharedObservations


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
        return jsonable(self)


def quantsim(model: ModelSource, data: DataSource, options: QuantOptions | None = None,
             run: RunOptions | None = None, *, check_loads: bool = True,
             shared: SharedObservations | None = None) -> tuple[ir.Model, Any, QuantsimSummary]:
    """Place quantizers, calibrate them with onnxruntime on ``data`` and insert QDQ nodes.

    Returns (sim model, Encodings, QuantsimSummary). ``model`` is left as it is: the sim is a
    new model (its big weights shared with ``model``, read-only; :func:`model_ops.clone`), at
    the opset the QDQ nodes need (13, or 21 for 16-bit). ``data``: a Dataset,
    or a path / 'random:N' opened for the model's inputs. ``check_loads``: make sure stock
    onnxruntime loads the sim (a caller that runs it right away, as ptq does, learns that anyway).
    ``shared``: a :class:`~aimetcli.quantsim.calibrate.SharedObservations` of ``model`` and ``data``
    from an earlier call (sims that differ only in their weight options reuse its runs); not used
    with ``--weight-range mse``, which moves the copy's weights onto their grids first.
    """
    start = time.perf_counter()
    model = as_model(model, float32=True, copy=True)
    options = options or QuantOptions()
    run = run or RunOptions()
    dataset = as_dataset(data, model)
    require_float_model(model)
    warnings = []
    from aimetcli.passes.fold_batchnorm import left_bns

    folds, left = left_bns(model)
    if folds:
        warnings.append(f"the model still has {len(folds)} BatchNormalization that fold-bn folds; run fold-bn first "
                        "to simulate what runtimes execute")
    if left:
        warnings.append(f"{len(left)} BatchNormalization left unfolded: fold-bn cannot fold "
                        f"{'it' if len(left) == 1 else 'them'} ({left[0].bn}: {left[0].reason})")
    from aimetcli.passes.fold_channel_affine import foldable

    if affine := foldable(model):
        warnings.append(f"{affine} layer{'s are' if affine > 1 else ' is'} followed by a constant per-channel Add/Sub/Mul (a bias or a BN spelled "
                        "out); run fold-bn first: it folds them into the layers' biases and weights, which model_qdq "
                        "then runs as integer layers")
    mismatch = bias_correction_mismatch(model, options)
    if mismatch:
        warnings.append(mismatch)
    from aimetcli.seqmse import apply_weight_range

    if apply_weight_range(model, dataset, options, run) is not None:  # --weight-range mse: grids frozen in the copy
        shared = None  # its weights are no longer the ones the shared runs observed
    model, encodings, placement, calib_seconds = simulate(model, options, dataset, run, shared)
    from aimetcli.quantsim.frozen import frozen_mismatch

    if frozen := frozen_mismatch(model, placement):
        warnings.append(frozen)
    warnings += placement.warnings
    for tensor, count in encodings.nonfinite.items():
        warnings.append(f"{count} NaN/Inf values in tensor {tensor!r} were ignored during calibration")
    for tensor, value in encodings.constant.items():
        warnings.append(f"input {tensor!r} is {value:g} in every calibration sample: its grid fits that value alone "
                        "and clips what the input carries at run time; calibrate on samples where it varies (a "
                        "streaming model's state: the values the model returns for it over real input)")
    # what we write must run on stock onnxruntime: check it loads (no optimizations: cheap)
    if check_loads and model_io.tensor_bytes(model) < model_io.IN_MEMORY_LIMIT:
        from aimetcli import runtime

        runtime.Session(model, runtime.LOAD)
    from aimetcli.export import embed

    embed(model, encodings_doc(encodings, options, "1.0.0"), encodings.params, options.as_record(),
          placement.skipped)
    summary = QuantsimSummary(
        options=options.as_record(),
        activation_quantizers=len(encodings.activations),
        param_quantizers=len(encodings.params),
        skipped=[{"tensor": t, "reason": r} for t, r in placement.skipped],
        opset=g.opset_version(model),
        samples=dataset.num_samples,
        batches=dataset.num_batches(run.batch_size),
        calibration_seconds=calib_seconds,
        seconds=time.perf_counter() - start,
        warnings=warnings,
    )
    return model, encodings, summary


def simulate(model: ir.Model, options: QuantOptions, dataset, run: RunOptions,
             shared: SharedObservations | None = None):
    """quantsim's core: raise the opset, place quantizers, calibrate, insert QDQ.

    Returns (sim model, Encodings, Placement, calibration seconds). ``model`` is modified
    in place unless its opset had to be raised (then a converted copy is the sim): quantsim
    hands it its own copy.
    """
    from aimetcli.quantsim.calibrate import calibrate
    from aimetcli.quantsim.insert import insert_qdq
    from aimetcli.quantsim.placement import place_quantizers

    model = upgrade_opset(model, sim_opset(options))
    placement = place_quantizers(model, options.config, options)
    t0 = time.perf_counter()
    encodings = calibrate(model, placement, options, dataset, run.batch_size, run.progress, shared)
    calib_seconds = time.perf_counter() - t0
    insert_qdq(model, encodings.activations, encodings.params)
    return model, encodings, placement, calib_seconds


def quantizer_args(options, encodings):
    """AIMET's quantizer_args, from what was actually computed (the config may decide symmetry)."""
    from aimetcli.encodings_types import QuantizerArgs, aimet_quant_scheme_name

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
    from aimetcli.encodings_types import TensorEncoding

    return [TensorEncoding(name, enc, "activation") for name, enc in sorted(encodings.activations.items())] + [
        TensorEncoding(name, enc, "param") for name, enc in sorted(encodings.params.items())]


def encodings_json(encodings, options, version: str) -> str:
    """The encodings file's text (:func:`encodings_write.dumps` of :func:`encodings_doc`)."""
    from aimetcli import encodings_write

    return encodings_write.text(encodings_doc(encodings, options, version))


def encodings_doc(encodings, options, version: str) -> dict:
    """The encodings file's document in AIMET's format ``version``, as JSON-ready Python objects."""
    from aimetcli import encodings_write
    from aimetcli.errors import AimetCliError, ErrorKind

    try:
        return encodings_write.to_dict(tensor_encodings(encodings), version=version,
                                       quantizer_args=quantizer_args(options, encodings))
    except ValueError as exc:  # e.g. 2.0.0 has no field for a 6-bit grid
        raise AimetCliError(f"encodings {version} cannot hold these encodings ({exc}); use --encoding-version 1.0.0",
                            ErrorKind.USAGE) from exc


def bias_correction_mismatch(model: ir.Model, options: QuantOptions) -> str | None:
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
    now = options.as_record()
    # the target only checks the grids (aimetcli/targets.py): it changes none
    diff = [k for k in sorted(now) if k != "target" and recorded.get(k) != now[k]]
    if not diff:
        return None
    parts = ", ".join(f"{k} {recorded.get(k)!r} -> {now[k]!r}" for k in diff)
    return f"the model's biases were corrected for other quantization options ({parts}); rerun bias-correct with these"
