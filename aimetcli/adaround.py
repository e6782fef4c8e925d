"""AdaRound on an ONNX model without torch: second moments from onnxruntime, rounding in numpy.

For every Conv, ConvTranspose (groups included), Gemm and MatMul whose weight quantsim would
quantize, kernels/adaround.py learns whether each weight rounds up or down from the layer's
input second moments G = sum x x^T, C = sum x f^T, F = sum f f^T (x: the input patch in the
model with its weights quantized up to the layer, f: the same patch in the FP32 model; sums
over samples and output positions; d x d per group, d = input channels of a group x kernel taps).

The moments come out of one onnxruntime graph per pass (aimetcli/adaround_moments.py).

Order: AIMET rounds layer after layer, each layer's input taken from the model with the earlier
layers already AdaRounded. Here ``passes`` splits the layers, in topological order, into that
many consecutive chunks; each chunk's moments are measured with the earlier chunks AdaRounded
and the rest rounded to nearest (``passes`` = number of layers is AIMET's order exactly; 1 is
one pass with every upstream layer rounded to nearest). Measured (MobileNetV2 sample, W4A8
per-tensor, 1,000 iterations, eval top-1; nearest rounding 60.00, FP32 92.15): one pass 37-56
(each layer compensates upstream nearest-rounding errors that AdaRound then removes), one pass
with FP32 inputs (x = f) 82.5, one pass per layer 91.35. So the default is AIMET's order: one
pass per layer, except that consecutive layers none of which reads another's output share a pass
(:func:`independent_chunks`: the same roundings); each pass is a run of the model over the data
(FP32 and quantized copies, up to the pass's layers).

The output is the FP32 model with each weight replaced by its AdaRounded grid values
(scale * integer, exactly what DequantizeLinear gives) and the grids recorded in
``metadata_props["aimetcli.adaround"]`` (:func:`frozen_encodings`): quantsim keeps them instead
of computing new ones from the rounded weights (whose range may have shrunk by a step).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli import big_tensors
from aimetcli import graph as g
from aimetcli.adaround_moments import (Cut, Target, collect_moments, cut_names, moments_graph, row_positions,
                                       weight_from_matrix)
from aimetcli.kernels import adaround as ar
from aimetcli.kernels.quant import Encoding
from aimetcli.layers import Layer, as_layer, weight_reason
from aimetcli.model_ops import require_float_model
from aimetcli.options import WeightRange
from aimetcli.quantsim.frozen import (  # noqa: F401  (the frozen-grid record: written here, read by quantsim)
    METADATA_KEY, frozen_encodings, frozen_mismatch, frozen_record, record_frozen,
)


@dataclass
class LayerResult:
    layer: str
    weight: str
    shape: list[int]
    loss_nearest: float  # E_pos ||W~ x - W f||^2 with round-to-nearest
    loss_adaround: float
    changed: float  # fraction of weights rounded the other way than to nearest
    iterations: int
    seconds: float  # this layer's share of its chunk's optimization time


@dataclass
class AdaroundResult:
    layers: list[LayerResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    oversized: list[str] = field(default_factory=list)  # skipped: moments over MOMENT_BYTES
    shared: list[str] = field(default_factory=list)  # skipped: a weight other layers read too
    passes: int = 0
    iterations: int = 0
    samples: int = 0
    options: dict = field(default_factory=dict)
    moments_seconds: float = 0.0
    optimize_seconds: float = 0.0
    seconds: float = 0.0
    model: ir.Model | None = field(default=None, repr=False)  # the AdaRounded model; not in the JSON

    def to_json(self) -> dict:
        from dataclasses import asdict, replace

        doc = asdict(replace(self, model=None))
        del doc["model"]
        doc["skipped"] = [{"layer": a, "reason": b} for a, b in self.skipped]
        return doc


# ----------------------------------------------------------------------------- the pass
# A layer's G and C (float64 sums) may take this much; a larger layer is not AdaRounded. The
# process's peak for a layer is about 2.5 times it (the runs' float32 outputs, the kernel's copies).
MOMENT_BYTES = 1 << 30
# A cut's tensors (both models, all the data) are kept for the next passes up to this many bytes;
# a pass whose cut is bigger starts the next one from the last cut kept (:func:`cuts`).
CUT_BYTES = 256 << 20
# models with more weight bytes than this collect each pass's garbage (:func:`measured_chunks`)
COLLECT_BYTES = 64 << 20


def moment_bytes(layer: Layer, shape: tuple[int, ...], samples: int) -> tuple[int, str]:
    """What a layer's moments hold over ``samples`` samples, in bytes and in words: G and C in
    float64, or for a layer that keeps its patch rows (:func:`row_positions`) X and F in float32."""
    groups, d = layer.matrix_dims(shape)
    positions = row_positions(layer, shape, samples)
    if positions is not None:
        return 8 * positions * d, f"{positions} x {d} float32 for the patch rows X and F"
    return 16 * groups * d * d, f"{groups} x {d} x {d} float64 for G and C"


def _targets(model: ir.Model, params: dict[str, Encoding], result: AdaroundResult, samples: int) -> list[Target]:
    readers: dict[str, int] = {}
    for node in model.graph:
        for v in node.inputs:
            if v is not None and v.name in params:
                readers[v.name] = readers.get(v.name, 0) + 1
    out = []
    for node in model.graph:
        layer = as_layer(node)
        if layer is None:
            continue
        reason = weight_reason(layer)
        w = layer.weight
        if reason is None and (w.name not in params or params[w.name].bitwidth > 16):
            reason = "its weight is not quantized by the config"
        if reason is None and readers.get(w.name, 0) > 1:
            reason = f"its weight {w.name} is shared with another layer"
            result.shared.append(layer.name)
        if reason is None and w.dtype != ir.DataType.FLOAT:
            reason = f"its weight is {w.dtype.name.lower()}, not float32"
        if reason is None:
            need, held = moment_bytes(layer, tuple(w.shape), samples)
            if need > MOMENT_BYTES:
                reason = (f"its second moments would take {need / 2**30:.1f} GiB ({held}; the limit is "
                          f"{MOMENT_BYTES / 2**30:g} GiB a layer)")
                result.oversized.append(layer.name)
        if reason:
            result.skipped.append((layer.name, reason))
            continue
        out.append(Target(layer, w.name, params[w.name]))
    return out


def independent_chunks(targets: list[Target]) -> list[list[Target]]:
    """The targets (in topological order) cut into runs of consecutive layers none of which reads
    another's output, directly or not: rounding one cannot change another's input, so measuring
    and rounding them together is AIMET's order exactly (one layer after another) in fewer passes
    (ResNet's downsample Conv beside its block's first Conv, ShuffleNetV2's two branches)."""
    chunks: list[list[Target]] = []
    members: set[int] = set()  # ids of the current chunk's layer nodes
    for t in targets:
        if chunks and not (members & _upstream(t.layer.node)):
            chunks[-1].append(t)
        else:
            chunks.append([t])
            members = set()
        members.add(id(t.layer.node))
    return chunks


def cuts(model: ir.Model, chunks: list[list[Target]]) -> list[tuple[set[str], set[int]]]:
    """Per chunk, the FP32 model's tensors at the cut before its layers: the outputs of the nodes
    its layers' inputs depend on (or an earlier chunk's did) that a node outside them reads; and
    the ids of those nodes (the ones behind the cut).

    A pass measures its chunk's inputs, so it computes its cut on the way, with the earlier
    chunks AdaRounded and its own layers not yet run: the next pass is fed that cut (both models,
    every run of the data) and runs only the nodes between the two cuts, instead of both models
    from their inputs again (the passes' cost summed goes from about half the model times the
    number of passes to one model; the next pass's own layers are after the cut, so their new
    rounding reaches the next cut). A cut over CUT_BYTES is not kept and the next pass starts
    from the last one that was (an expanded activation inside a block costs a recomputation of
    its block's first layers, not its size in memory)."""
    done: set[int] = set()
    nodes = list(model.graph)
    out = []
    for chunk in chunks:
        for t in chunk:
            done |= _upstream(t.layer.node)
        out.append(({v.name for n in nodes if id(n) in done for v in n.outputs
                     if any(id(use.node) not in done for use in v.uses())}, set(done)))
    return out


def measured_chunks(model: ir.Model, chunks: list[list[Target]], quantized: Callable[[], ir.Model | None],
                    dataset, run_size: int, progress) -> Iterator[list[Target]]:
    """Each chunk of ``chunks`` in turn, once its targets' second moments are set (``t.problem``):
    one pass over ``dataset`` of the FP32 model (its weights as they are now) beside
    ``quantized()`` (called per pass: the model quantized as the caller has it then; None: the
    layers' inputs are the FP32 model's). Each pass starts from the cut the one before kept
    (:func:`cuts`, at most CUT_BYTES), so the caller may change the model between chunks
    (AdaRound's roundings, SeqMSE's grids): its own layers lie after the next cut. Once a pass
    starts from a cut, the FP32 weights read only behind it are let go (the FP32 copy takes the
    model's tensor there, which nothing runs again): a model's memory does not double as its
    weights are replaced."""
    from aimetcli.quantsim.calibrate import calibration_weights

    fp32 = calibration_weights(model, {})
    # an onnx-ir model is a web of reference cycles (graph, nodes, values): each pass's quantized
    # copy of the weights stays until Python's cyclic collector runs, which numpy's few large
    # allocations hardly trigger (the 2.25 GiB chain: 23 GB and killed), so a big model's passes
    # collect it (a collection costs ~35 ms on the MobileNetV2 sample: not for small models)
    collect = big_tensors.tensor_bytes(model) > COLLECT_BYTES
    readers = {name: {id(use.node) for use in v.uses()} for name, v in model.graph.initializers.items()}
    resume: Cut | None = None
    for chunk, (cut, behind) in zip(chunks, cuts(model, chunks)):
        q = quantized()
        joint, names = moments_graph(fp32, q, chunk, start=resume, keep=cut, samples=dataset.num_samples)
        kept = collect_moments(joint, names, chunk, dataset, run_size, progress, start=resume,
                               keep=cut_names(cut, q is not None), keep_bytes=CUT_BYTES)
        if kept is not None:  # the next passes start from this cut or a later one
            resume = kept
            for name in [n for n, r in readers.items() if r and r <= behind]:
                fp32.graph.initializers[name].const_value = model.graph.initializers[name].const_value
                del readers[name]
        del q, joint
        if collect:
            gc.collect()
        yield chunk


def _upstream(node: ir.Node) -> set[int]:
    """ids of the nodes whose outputs ``node``'s data input depends on."""
    seen: set[int] = set()
    stack = [node.inputs[0].producer()] if node.inputs and node.inputs[0] is not None else []
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        stack.extend(v.producer() for v in n.inputs if v is not None)
    return seen


def adaround(model: ir.Model, dataset, options, *, batch_size: int = 32,
             params: ar.AdaroundParams = ar.AdaroundParams(), passes: int | None = None, progress=None,
             on_layer=None, quantized_inputs: bool = True) -> AdaroundResult:
    """AdaRound every quantized weight of ``model`` (modified in place) for quantsim with ``options``.

    ``passes``: chunks of layers measured in turn (module docstring). ``progress(samples)`` is
    called as data is read, ``on_layer(LayerResult)`` when a layer is done. Refuses a model that
    is already quantized or computes in float16 (``require_float_model``). The quantsim config is
    ``options.config``.
    """
    start = time.perf_counter()
    require_float_model(model)
    from aimetcli.quantsim.calibrate import calibration_weights, param_encodings, reduction_run_size
    from aimetcli.quantsim.placement import place_quantizers

    cfg = options.config
    result = AdaroundResult(samples=dataset.num_samples, options=options.as_record())
    placement = place_quantizers(model, cfg, options)
    weights = {p.tensor for p in placement.params if p.kind == "weight"}
    # grids frozen by SeqMSE (--weight-range mse) are AdaRound's grids; otherwise computed anew
    seqmse = options.weight_range is WeightRange.MSE
    encodings = {k: v for k, v in param_encodings(model, placement, options, frozen=seqmse).items() if k in weights}
    targets = _targets(model, encodings, result, dataset.num_samples)
    if not targets:
        result.seconds = time.perf_counter() - start
        return result
    iterations = params.iterations or ar.default_iterations(min(t.enc.bitwidth for t in targets))
    result.iterations = iterations
    if passes is None:
        chunks = independent_chunks(targets)
    else:
        bounds = np.linspace(0, len(targets), max(1, min(passes, len(targets))) + 1).round().astype(int)
        chunks = [targets[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    run_size = min(batch_size, reduction_run_size(dataset))
    t0 = time.perf_counter()
    for chunk in measured_chunks(model, chunks, (lambda: calibration_weights(model, encodings))
                                 if quantized_inputs else (lambda: None), dataset, run_size, progress):
        result.moments_seconds += time.perf_counter() - t0
        _round_chunk(chunk, params, iterations, result, on_layer)
        result.passes += 1
        t0 = time.perf_counter()
    record_frozen(model, {t.weight: t.enc for t in targets}, result.options)
    result.seconds = time.perf_counter() - start
    return result


def _round_chunk(chunk: list[Target], params: ar.AdaroundParams, iterations: int, result: AdaroundResult,
                 on_layer) -> None:
    """Optimise a chunk's roundings and write its weights back (a function of its own: the
    rounded integers and the replaced weights are let go before the next pass, not held by the
    caller's loop through it: two copies of a layer on the 2.25 GiB chain)."""
    t1 = time.perf_counter()
    rounded = ar.optimize([t.problem for t in chunk], params, iterations=iterations)
    seconds = time.perf_counter() - t1
    result.optimize_seconds += seconds
    total = sum(t.problem.w.size for t in chunk)
    for t, r in zip(chunk, rounded):
        shape = tuple(int(n) for n in t.layer.weight.const_value.shape)  # the weight's, not held
        size = int(np.prod(shape))
        # float32(k) * scale: what DequantizeLinear gives for the integer k + zero point
        wq = r.k.astype(np.float32) * t.enc.scale.reshape(t.problem.scale.shape)
        g.set_constant(t.layer.weight, weight_from_matrix(t.layer, wq, shape))
        row = LayerResult(t.layer.name, t.weight, list(shape), r.loss_nearest, r.loss_adaround,
                          r.changed / max(size, 1), iterations, seconds * size / max(total, 1))
        result.layers.append(row)
        t.problem = None  # the moments are no longer needed
        if on_layer is not None:
            on_layer(row)
