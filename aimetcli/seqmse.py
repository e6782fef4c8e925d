"""Sequential MSE weight ranges (AIMET's ``apply_seq_mse``) on an ONNX model without torch.

For every Conv, ConvTranspose, Gemm and MatMul weight quantsim would quantize, in topological
order, the weight's grid (per channel where per-channel) is chosen among AIMET's 20 candidates,
the min-max grid's range times (k + 1) / 20, as the one that minimises the layer's output error
with its input taken from the model quantized up to it (kernels/seqmse.py has the math and the
choice). As AIMET does, the activations stay float while the ranges are searched (AIMET disables
every activation quantizer during the search) and the loss is 'symqt' (AIMET's default: the
target is the float weight applied to the same quantized input).

The second moments G = sum x x^T of each layer's input patches come from AdaRound's graphs
(aimetcli/adaround_moments.py: one onnxruntime pass per run of layers none of which reads
another's output, with the earlier layers' chosen grids applied), so a candidate costs
O(m d^2) whatever the number of samples. The output is the FP32 model with each searched weight
replaced by its grid values (scale * integer, what DequantizeLinear gives: clipped where the
chosen range clips) and the grids frozen in the model as AdaRound freezes them
(aimetcli/quantsim/frozen.py): quantsim and export keep them. Weights whose grids are already
frozen (an AdaRounded model) keep them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.adaround import AdaroundResult, _targets, independent_chunks, measured_chunks
from aimetcli.adaround_moments import Target, weight_matrix
from aimetcli.kernels import seqmse as sm
from aimetcli.kernels.quant import Encoding, QuantScheme, fake_quantize
from aimetcli.model_ops import require_float_model
from aimetcli.quantsim.frozen import frozen_encodings, frozen_record, record_frozen


@dataclass
class SeqMseLayer:
    layer: str
    weight: str
    shape: list[int]
    fraction: float  # mean chosen range over the min-max range, over the channels (1.0: min-max kept)
    loss_minmax: float  # output error (sum over positions and channels) with the min-max grid
    loss_mse: float  # with the chosen grid
    seconds: float


@dataclass
class SeqMseResult:
    layers: list[SeqMseLayer] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    kept_frozen: list[str] = field(default_factory=list)  # weights whose grids were already frozen
    passes: int = 0
    samples: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["skipped"] = [{"layer": a, "reason": b} for a, b in self.skipped]
        return doc


def _channel_of_rows(t: Target, shape: tuple[int, ...]) -> np.ndarray:
    """[g, m]: the encoding channel each row of weight_matrix belongs to (0 for per-tensor)."""
    if not t.enc.per_channel:
        return np.zeros(weight_matrix(t.layer, np.zeros(shape, np.float32)).shape[:2], np.int64)
    view = [1] * len(shape)
    view[t.enc.axis] = -1
    idx = np.broadcast_to(np.arange(shape[t.enc.axis], dtype=np.float32).reshape(view), shape)
    return weight_matrix(t.layer, np.ascontiguousarray(idx))[:, :, 0].astype(np.int64)


def search_layer(t: Target) -> tuple[Encoding, float, float, float]:
    """(chosen grid, mean range fraction, loss with min-max, loss chosen) of a target whose
    moments are collected (``t.problem``)."""
    p = t.problem
    assert p is not None
    w = np.asarray(t.layer.weight_array(), np.float32)
    w3 = weight_matrix(t.layer, w)
    rows = _channel_of_rows(t, w.shape).ravel()
    grids = sm.candidate_grids(t.enc)
    channels = t.enc.num_channels
    losses = np.empty((len(grids), channels))
    for k, grid in enumerate(grids):
        errors = p.channel_energies(weight_matrix(t.layer, fake_quantize(w, grid)) - w3.astype(np.float64))
        losses[k] = np.bincount(rows, weights=errors.ravel(), minlength=channels)
    chosen = sm.choose(losses, t.enc.per_channel)
    enc = sm.assemble(grids, chosen)
    cols = np.arange(channels)
    fraction = float(np.mean((chosen + 1) / len(grids)))
    return enc, fraction, float(losses[-1].sum()), float(losses[chosen, cols].sum())


def seq_mse(model: ir.Model, dataset, options, *, batch_size: int = 32,
            progress: Callable[[int], None] | None = None,
            on_layer: Callable[[SeqMseLayer], None] | None = None, on_grid: bool = True) -> SeqMseResult:
    """Choose every quantized weight's grid by SeqMSE for quantsim with ``options`` (module
    docstring); ``model`` is modified in place (grids frozen; ``on_grid``: the weights replaced by
    their grid values, False for AdaRound, which rounds the float weights on the frozen grids).
    ``progress(samples)`` as data is read, ``on_layer(SeqMseLayer)`` when a layer is done."""
    start = time.perf_counter()
    require_float_model(model)
    from aimetcli.quantsim.calibrate import calibration_weights, param_encodings, reduction_run_size
    from aimetcli.quantsim.placement import place_quantizers

    result = SeqMseResult(samples=dataset.num_samples)
    placement = place_quantizers(model, options.config, options)
    weights = {p.tensor for p in placement.params if p.kind == "weight"}
    kept = frozen_encodings(model, placement)
    # the candidates scale the min-max grid (AIMET requires its TF scheme for SeqMSE)
    base = replace(options, scheme=QuantScheme.MIN_MAX)
    encodings = {k: v for k, v in param_encodings(model, placement, base).items() if k in weights}
    scratch = AdaroundResult()
    targets = [t for t in _targets(model, encodings, scratch, dataset.num_samples) if t.weight not in kept]
    result.skipped = scratch.skipped
    result.kept_frozen = sorted(kept)
    run_size = min(batch_size, reduction_run_size(dataset))
    t0 = time.perf_counter()
    for chunk in measured_chunks(model, independent_chunks(targets), lambda: calibration_weights(model, encodings),
                                 dataset, run_size, progress):
        for t in chunk:
            enc, fraction, loss_minmax, loss_mse = search_layer(t)
            encodings[t.weight] = t.enc = enc
            t.problem = None
            row = SeqMseLayer(t.layer.name, t.weight, list(t.layer.weight.shape), fraction, loss_minmax, loss_mse,
                              (time.perf_counter() - t0) / len(chunk))
            result.layers.append(row)
            if on_layer is not None:
                on_layer(row)
        result.passes += 1
        t0 = time.perf_counter()
    for t in targets if on_grid else ():  # the weights onto their grids: what quantsim's QDQ gives them
        w = np.asarray(t.layer.weight_array(), np.float32)
        g.set_constant(t.layer.weight, fake_quantize(w, t.enc))
    if targets:
        previous = frozen_record(model)
        frozen = dict(previous[0]) if previous else {}
        frozen.update({t.weight: t.enc for t in targets})
        record_frozen(model, frozen, options.as_record())
    result.seconds = time.perf_counter() - start
    return result


def apply_weight_range(model: ir.Model, dataset, options, run, *, on_grid: bool = True) -> SeqMseResult | None:
    """:func:`seq_mse` when ``options.weight_range`` is MSE (None otherwise), a line per layer to
    ``run.log``. Steps call it first: weights already frozen (by an earlier step) are kept."""
    from aimetcli.options import WeightRange

    if options.weight_range is not WeightRange.MSE:
        return None
    log = run.log
    count = [0]

    def line(row: SeqMseLayer) -> None:
        count[0] += 1
        if log is not None:
            gain = 100 * (1 - row.loss_mse / row.loss_minmax) if row.loss_minmax > 0 else 0.0
            log(f"SeqMSE {count[0]}: {row.layer}: range {100 * row.fraction:.0f}% of min-max, output error "
                f"-{gain:.1f}% ({row.seconds:.2f} s)")

    return seq_mse(model, dataset, options, batch_size=run.batch_size, on_layer=line, on_grid=on_grid)
