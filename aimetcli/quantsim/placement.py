"""Phase one of quantsim: decide which tensors get a quantizer (nothing is inserted here).

Rules, as AIMET's QuantizationSimModel applies its config:

* every op's float outputs are quantized, unless the op type turns it off (data
  movement: Reshape, Flatten, Transpose, ...: their output stays on the grid of
  their input) or the op is inside a supergroup (Conv+Relu, Conv+Clip, Add+Relu,
  ...), where only the last op of the group is quantized, as a fused kernel would;
* model inputs when ``model_input.is_input_quantized``; inputs of ops whose type
  sets ``is_input_quantized``; graph outputs when ``model_output.is_output_quantized``;
* weights of Conv / ConvTranspose / Gemm / MatMul (per channel on the output-channel
  axis when asked), biases only when the config quantizes them.

Beyond the config, as AIMET's ONNX graph passes do (``aimet_onnx/graph_passes``, e.g. its
LayerNormalization and RMSNormalization passes), an operation spelled out as several ops
is one unit quantized at its output only; its internals stay float:

* LayerNormalization written out (torch below opset 17, paddle2onnx):
  ``ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div [-> Mul(g) -> Add(b)]``.
  An 8-bit grid on ``(x - mean)^2`` squares the dynamic range: a channel at a tenth of the
  largest deviation lands a hundredth of the way up the grid, below one step, and its
  variance rounds to 0;
* GELU through Erf: ``x * 0.5 * (1 + erf(x / sqrt 2))`` (Div or Mul before Erf; the 0.5 on
  either side of the Mul by x);
* a layer whose bias is a separate Add of a constant (Conv -> Add in paddle2onnx exports,
  MatMul -> Add in torch's Linear on 3-D inputs): the grid goes after the bias, where a
  runtime's kernel (which adds the bias itself) puts it; on the layer's own output it would
  round every value twice, on a grid off by the bias.

onnxruntime's quantize_static (QDQ) leaves all of these float too: its QDQ registry quantizes
only Conv/Gemm/MatMul, pooling, data movement, Resize, Where and the fused normalizations.

After calibration, :func:`revise_after_calibration` drops the output quantizer of a Concat
whose inputs' ranges are too far apart to share one grid, and clamps the grid of an additive
attention mask's sum as AIMET does (see there). Control flow: nodes inside
If/Loop/Scan subgraphs are not quantized; a model whose weights are all there is refused,
otherwise the float nodes are named in a warning (:func:`aimetcli.graph.control_flow_nodes`).

The result lists every quantizer with its bitwidth and symmetry, and every
candidate left unquantized with the reason (``-v``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.kernels.quant import Encoding
from aimetcli.layers import as_layer
from aimetcli.options import QuantOptions
from aimetcli.quantsim.config import QuantsimConfig
from aimetcli.quantsim.per_layer import apply_bits, apply_exclusions
from aimetcli.quantsim.units import SAME_GRID_OPS, input_grid, unit_inner
from aimetcli.verdict import Verdict, skip

# float16/bfloat16 tensors stay unquantized: QDQ scales would have to be float16 too.
FLOAT_TYPES = (ir.DataType.FLOAT,)


@dataclass
class ActQuantizer:
    tensor: str
    bitwidth: int
    symmetric: bool
    encoding_min: float | None = None  # config encoding_constraints
    encoding_max: float | None = None


@dataclass
class ParamQuantizer:
    tensor: str
    kind: str  # "weight" or "bias"
    op: str
    bitwidth: int
    symmetric: bool
    axis: int | None  # per-channel axis of the tensor, None for per-tensor


@dataclass
class Placement:
    activations: list[ActQuantizer] = field(default_factory=list)
    params: list[ParamQuantizer] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    strict_symmetric: bool = False
    # AIMET's unsigned symmetric: a symmetric quantizer whose data are never negative gets
    # the grid [0, max] (offset 0, unsigned integers) instead of wasting its negative half
    unsigned_symmetric: bool = False
    warnings: list[str] = field(default_factory=list)  # for the user: what stays float and why


def _is_float(value: ir.Value) -> bool:
    return value.dtype in FLOAT_TYPES


def integer_cast(value: ir.Value) -> ir.Node | None:
    """A Cast to a non-float type that reads ``value`` (directly or through data movement), or
    None. Such a float tensor holds ids or counts (a Thai segmenter's character ids go Cast ->
    Gather): on a grid, 1.0 becomes 0.992 and the Cast truncates it to 0, so it stays float."""
    todo, seen = [value], set()
    while todo:
        value = todo.pop()
        for node in value.consumers():
            if id(node) in seen:
                continue
            seen.add(id(node))
            if g.is_op(node, "Cast"):
                if not ir.DataType(node.attributes.get_int("to", 0)).is_floating_point():
                    return node
            elif g.is_op(node, *SAME_GRID_OPS) and node.inputs and node.inputs[0] is value:
                todo += list(node.outputs)
    return None


def _supergroup_inner(graph: ir.Graph, groups: list[tuple[str, ...]]) -> dict[ir.Node, Verdict]:
    """Nodes whose output is fused into the next op of a supergroup, each with the verdict that
    skips its output."""
    inner: dict[ir.Node, Verdict] = {}
    for node in graph:
        for ops in groups:
            if not g.is_op(node, ops[0]):
                continue
            chain, cur = [node], node
            for op in ops[1:]:
                nxt = g.sole_consumer(cur.outputs[0]) if cur.outputs else None
                if nxt is None or not g.is_op(nxt, op) or nxt.inputs[0] is not cur.outputs[0]:
                    chain = None
                    break
                chain.append(nxt)
                cur = nxt
            if chain:
                for n in chain[:-1]:
                    inner[n] = skip(f"inside supergroup {'+'.join(ops)}")
    return inner


def place_quantizers(model: ir.Model, cfg: QuantsimConfig, opts: QuantOptions) -> Placement:
    graph = model.graph
    placement = Placement(strict_symmetric=cfg.strict_symmetric, unsigned_symmetric=cfg.unsigned_symmetric)
    seen: set[str] = set()

    def act_symmetric(op: str) -> bool:
        return opts.act_symmetric if opts.act_symmetric is not None else cfg.op_act_symmetric(op)

    def add_act(value: ir.Value, op: str) -> None:
        if value.name in seen:
            return
        if not _is_float(value):
            if value.dtype is None:
                placement.skipped.append((value.name, "element type unknown (shape inference could not tell)"))
            return
        seen.add(value.name)
        if (cast := integer_cast(value)) is not None:
            placement.skipped.append((value.name, f"read by {g.node_label(cast)}, a Cast to "
                                      f"{ir.DataType(cast.attributes.get_int('to', 0)).name.lower()}: ids or counts, "
                                      "which a grid would change; left float"))
            return
        rule = cfg.op_types.get(op)
        placement.activations.append(ActQuantizer(
            value.name, opts.act_bw, act_symmetric(op),
            rule.encoding_min if rule else None, rule.encoding_max if rule else None))

    if cfg.model_input_quantized:
        for value in graph.inputs:
            if not value.is_initializer():
                add_act(value, "model_input")
    inner = {**unit_inner(graph), **_supergroup_inner(graph, cfg.supergroups)}
    for node in graph:
        op = node.op_type
        if node.domain not in g.ONNX_DOMAINS:
            kind = "ONNX-ML op" if node.domain == "ai.onnx.ml" else "custom op"
            placement.skipped.append((g.node_label(node), f"{kind} {node.domain}::{op} left unquantized"))
            continue
        if cfg.op_input_quantized(op):
            for value in node.inputs:
                if value is not None and not value.is_initializer():
                    add_act(value, op)
        for value in node.outputs:
            if not value.uses() and not value.is_graph_output():
                continue
            if node in inner:
                placement.skipped.append((value.name, inner[node].reason))
            elif not cfg.op_output_quantized(op):
                placement.skipped.append((value.name, f"{op} output is not quantized by the config"))
            else:
                add_act(value, op)
        _place_params(node, cfg, opts, placement)
    if cfg.model_output_quantized:
        for value in graph.outputs:
            add_act(value, "model_output")
    if recurrent := [node.op_type for node in graph if g.is_op(node, *RECURRENT_OPS)]:
        n = len(recurrent)
        placement.warnings.append(f"{n} {'/'.join(sorted(set(recurrent)))} layer{'s keep their' if n > 1 else ' keeps its'} "
                                  "weights float: quantsim quantizes the weights of Conv, ConvTranspose, Gemm and MatMul only")
    apply_exclusions(model, placement, opts.exclude)
    apply_bits(model, placement, opts.bits)
    note_control_flow(model, placement)
    if not placement.activations and not placement.params:  # a sim of it would be the FP32 model, called quantized
        ops = Counter(f"{node.domain}::{node.op_type}" if node.domain not in g.ONNX_DOMAINS else node.op_type
                      for node in graph)
        raise AimetCliError(
            f"nothing to quantize: no tensor of the model takes a quantizer (its ops: "
            f"{', '.join(f'{op} x{n}' for op, n in ops.most_common(4)) or 'none'}"
            f"{'; --exclude left none' if opts.exclude else ''}); aimetcli quantizes float32 weights of Conv, "
            "ConvTranspose, Gemm and MatMul and the float32 activations of the main graph's ONNX ops",
            ErrorKind.UNSUPPORTED)
    if opts.target != "generic":  # what the target cannot run: refused before calibration
        from aimetcli.targets import check_placement

        check_placement(model, placement, opts)
    return placement


def note_control_flow(model: ir.Model, placement: Placement) -> None:
    """Record what a model's If/Loop/Scan subgraphs leave float (a warning, and each holder in
    ``skipped``); refuse when that is the whole network: weighted layers in the subgraphs and
    none in the main graph, which would come out FP32 and be called quantized."""
    flow = g.control_flow_nodes(model)
    if flow is None:
        return
    where = flow.describe()
    if flow.weighted and not any(g.is_op(node, *g.WEIGHTED_OPS) for node in model.graph):
        raise AimetCliError(
            f"the network is inside the subgraphs of {where}, which aimetcli does not quantize "
            f"({flow.weighted} weighted layers there, none in the main graph); export the model without the "
            "control flow (the branch or loop body you run, inlined) and quantize that", ErrorKind.UNSUPPORTED)
    placement.warnings.append(f"{flow.nodes} nodes inside the subgraphs of {where} stay float "
                              f"({flow.weighted} of them weighted layers): only the main graph is quantized")
    for node, count in flow.holders:
        placement.skipped.append((g.node_label(node), f"{node.op_type} with {count} nodes in its subgraphs, "
                                                       "which are not quantized"))


# A Concat input that would keep fewer levels than this on the Concat's one output grid keeps
# its own grid instead (4 bits: a signal spread over 16 levels has at most ~26 dB SQNR,
# 6.02 dB per bit plus 1.76, where its own 8-bit grid gave it ~50 dB).
MIN_CONCAT_LEVELS = 16


def revise_after_calibration(model: ir.Model, placement: Placement, activations: dict[str, Encoding],
                             masked: dict[str, float] | None = None) -> None:
    """Drop the output quantizer of each Concat that would destroy one of its inputs.

    One grid over a Concat spans the union of its inputs' ranges: an input whose range is
    ``1/k`` of the union keeps ``num_steps / k`` levels of it. A YOLO head concatenates boxes
    in pixels ([0, 640]) with sigmoid scores ([0, 1]): at 8 bits the scores keep 0.4 levels,
    every score becomes 0 and the detector finds nothing. When some input would keep fewer than
    MIN_CONCAT_LEVELS levels and every input is already on a grid of its own (its producer's
    output quantizer, possibly through data movement), the Concat's output quantizer goes:
    its output is the float Concat of the dequantized inputs, exact on each input's grid.
    The quantizer and its encoding are removed from ``placement`` and ``activations``, and
    the reason is recorded in ``placement.skipped``. The exported model_qdq.onnx keeps that
    Concat float in onnxruntime too (a hand-built YOLO-like head: scores at 41 dB with all
    graph optimizations on, as with none).
    """
    dropped: dict[str, str] = {}
    for node in model.graph:
        if not g.is_op(node, "Concat") or not node.outputs:
            continue
        out = activations.get(node.outputs[0].name)
        if out is None or out.per_channel:
            continue
        grids = [input_grid(v, activations) for v in node.inputs]
        if len(grids) < 2 or any(grid is None or grid[1].per_channel for grid in grids):
            continue
        levels = {name: enc.num_steps * float(enc.scale) / float(out.scale) for name, enc in grids}
        narrow = min(levels, key=levels.get)
        if levels[narrow] < MIN_CONCAT_LEVELS:
            dropped[node.outputs[0].name] = (
                f"Concat of ranges too far apart for one grid: its input {narrow} would keep {levels[narrow]:.1f} "
                f"of {out.num_steps + 1} levels (fewer than {MIN_CONCAT_LEVELS}); each input keeps its own grid")
    drop_quantizers(placement, activations, dropped)
    _clamp_attention_masks(model, placement, activations, masked or {})


def drop_quantizers(placement: Placement, activations: dict[str, Encoding], reasons: dict[str, str]) -> None:
    """Remove the activation quantizers of the tensors ``reasons`` names from ``placement`` and
    their encodings from ``activations``, each recorded in ``placement.skipped`` with its reason."""
    for name in reasons:
        activations.pop(name, None)
    placement.activations = [a for a in placement.activations if a.tensor not in reasons]
    placement.skipped += reasons.items()


# AIMET's mask override (aimet_torch and aimet_tensorflow transformer_utils.MASK_OVERRIDE_VALUE): the
# encoding min of an attention head's mask Add, whatever the mask's own large negative
MASK_OVERRIDE_MIN = -6.0
# A Softmax input calibrated below this holds an additive attention mask (0 where attended; -1e4, or
# float32's lowest where not: Hugging Face exports): no score gets there (e^-1000 is 0 in float64)
MASK_FLOOR = -1000.0


def _clamp_attention_masks(model: ir.Model, placement: Placement, activations: dict[str, Encoding],
                           masked: dict[str, float]) -> None:
    """Give the sum of an additive attention mask and the scores the grid [MASK_OVERRIDE_MIN, max].

    scores + mask, where the mask is 0 or a huge negative (a padded batch), reaches Softmax; its
    min-max grid spans [-3.4e38, max] and rounds every score to 0 (attention turns uniform: a
    MiniLM's output falls to about 0 dB with padded calibration text). AIMET clamps the encoding min
    of the mask Add of the attention blocks it knows (BERT, DistilBERT, GPT-2, ...) to -6: the
    masked positions then weigh e^-6 of a score of 0 instead of nothing, and the scores keep
    their grid. A mask filled in (torch's masked_fill: Where(mask, fill, scores)) is the same
    tensor. Here: an Add, Sub or Where whose calibrated min is under MASK_FLOOR (``masked``: its
    observed max, which its grid, one step of ~1e36, no longer tells) and whose output reaches only
    Softmax / LogSoftmax (through data movement); per tensor, at its own bitwidth."""
    from aimetcli.kernels.quant import encoding_from_range

    clamped = []
    for node in model.graph:
        name = node.outputs[0].name if g.is_op(node, "Add", "Sub", "Where") and node.outputs else ""
        if (enc := activations.get(name)) is None or name not in masked or enc.per_channel or enc.symmetric:
            continue
        if _read_only_by(node.outputs[0], ("Softmax", "LogSoftmax")):
            activations[name] = encoding_from_range(MASK_OVERRIDE_MIN, max(masked[name], 0.0), enc.bitwidth, False)
            clamped.append(name)
    if clamped:
        placement.warnings.append(
            f"{len(clamped)} attention mask sum(s) read by Softmax (first {clamped[0]!r}) calibrated below "
            f"{MASK_FLOOR:g}: their grids start at {MASK_OVERRIDE_MIN:g}, as AIMET's mask override does, so "
            "the scores keep their resolution")


def _read_only_by(value: ir.Value, ops: tuple[str, ...]) -> bool:
    """Every reader of ``value``, through data movement (SAME_GRID_OPS), is one of ``ops``."""
    readers = list(value.uses())
    if not readers or value.is_graph_output():
        return False
    for node, _ in readers:
        if g.is_op(node, *SAME_GRID_OPS):
            if not all(_read_only_by(out, ops) for out in node.outputs):
                return False
        elif not g.is_op(node, *ops):
            return False
    return True


# Ops with weights that quantsim places no quantizer on (only Conv, ConvTranspose, Gemm and MatMul
# weights are quantized): said per node, so a recurrent model is not called quantized in silence
RECURRENT_OPS = ("GRU", "LSTM", "RNN")


def _place_params(node: ir.Node, cfg: QuantsimConfig, opts: QuantOptions, placement: Placement) -> None:
    layer = as_layer(node)
    if layer is None:
        if g.is_op(node, *RECURRENT_OPS) and any(g.constant(v) is not None for v in node.inputs[1:3]):
            placement.skipped.append((g.node_label(node), f"{node.op_type} weights stay float: quantsim quantizes "
                                                           "the weights of Conv, ConvTranspose, Gemm and MatMul only"))
        return
    op = node.op_type
    for kind, value in (("weight", layer.weight), ("bias", layer.bias)):
        if value is None:
            continue
        arr = g.constant(value)
        if arr is None or not g.is_float_dtype(arr):
            if kind == "weight":
                placement.skipped.append((g.node_label(node), "weight is not a constant float tensor"))
            continue
        if any(p.tensor == value.name for p in placement.params):
            continue  # shared weight: one quantizer
        rule = cfg.param_rule(op, kind)
        if not rule.is_quantized:
            continue
        if value.dtype not in FLOAT_TYPES:  # QuantizeLinear takes float32 here; a float16 QDQ would be invalid
            placement.skipped.append((value.name, f"{kind} is {value.dtype.name.lower()}; left unquantized"))
            continue
        symmetric = opts.param_symmetric if opts.param_symmetric is not None else bool(rule.is_symmetric)
        per_channel = opts.per_channel if opts.per_channel is not None else cfg.op_per_channel(op)
        axis = layer.spec.per_channel_axis(layer.groups, arr.ndim) if (per_channel and kind == "weight") else None
        if per_channel and kind == "weight" and axis is None:
            placement.skipped.append((value.name, "per-channel not possible here (grouped ConvTranspose); per-tensor"))
        bw = opts.param_bw if kind == "weight" else 32
        placement.params.append(ParamQuantizer(value.name, kind, op, bw, symmetric if kind == "weight" else True, axis))
