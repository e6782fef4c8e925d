"""Target profiles (``--target``): which grids a runtime runs, checked before a sim is built and
again before one is exported. The one table of these rules is :data:`TARGETS`.

A weighted layer (Conv, Gemm, MatMul, ... with a quantized weight) runs on a target when its
(weight bits, activation bits) pair is one the target has kernels for; the activation bits are
those of the layer's output grid, found through the ops a supergroup leaves unquantized (Conv ->
Relu: the Relu's grid). Every other quantized activation needs a bitwidth the target has, and a
per-channel weight grid must be symmetric where the target says so.

- ``htp`` (Qualcomm's Hexagon NPU through QNN): the integer kernels of AIMET's backend-aware HTP
  config (``backend_aware_htp_quantsim_config_v75.json``: Conv2d and DepthWiseConv2d
  list A8W8, A16W8 and A16W16) and INT4 weights (W4A8, W4A16: Qualcomm's HTP guidelines, "INT4
  encodings for weights", per tensor or per channel, with their gains on Conv2D, FullyConnected
  and MatMul);
  activations 8 or 16 bits; weights symmetric when per channel (QNN's axis encodings carry one
  scale per channel and offset 0; AIMET's HTP configs make every param symmetric).
- ``onnxruntime``: grids that are onnxruntime QDQ types: weights int4 (opset 21), 8 or 16 bits,
  activations 8 or 16 bits (uint16/int16 at opset 21); any pair of those. Another bitwidth is
  stored in the next container with a Clip to its grid, which no runtime reads as that bitwidth.
- ``generic``: anything aimetcli simulates (2 to 16 bits), the default; nothing is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.quantsim.units import input_grid


@dataclass(frozen=True)
class Target:
    name: str
    pairs: tuple[tuple[int, int], ...] | None  # (weight bits, activation bits) of a weighted layer; None: any
    activation_bits: tuple[int, ...] | None  # of any other quantized activation; None: any
    per_channel_symmetric: bool  # per-channel weight grids must be symmetric

    @property
    def weight_bits(self) -> tuple[int, ...] | None:
        return None if self.pairs is None else tuple(sorted({w for w, _ in self.pairs}))

    def allowed(self) -> str:
        """The pairs as a user reads them: W8A8, W8A16, ..."""
        return ", ".join(f"W{w}A{a}" for w, a in self.pairs) if self.pairs is not None else "any"


TARGETS: dict[str, Target] = {
    "generic": Target("generic", None, None, False),
    "htp": Target("htp", ((8, 8), (8, 16), (16, 16), (4, 8), (4, 16)), (8, 16), True),
    "onnxruntime": Target("onnxruntime", tuple((w, a) for w in (4, 8, 16) for a in (8, 16)), (8, 16), False),
}
NAMES = tuple(TARGETS)  # the CLI's choices (the default first)


def get(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise AimetCliError(f"--target {name!r} is not a target; give one of {', '.join(NAMES)}",
                            ErrorKind.USAGE) from None


@dataclass(frozen=True)
class WeightGrid:
    """What the check needs of a weight's grid."""

    bitwidth: int
    symmetric: bool
    per_channel: bool


@dataclass(frozen=True)
class Misfit:
    """One quantizer (or weighted layer) the target cannot run."""

    layer: str  # node label, or the tensor for an activation
    tensor: str  # the weight, or the activation
    weight_bits: int | None
    act_bits: int | None
    reason: str
    act_tensor: str | None = None  # the activation whose grid gave act_bits


def _output_grid(node: ir.Node, activations: dict[str, int]) -> str | None:
    """The activation whose grid the layer's output lands on: its own, or that of the ops a
    supergroup fuses after it (sole consumers whose input is not quantized); None when float."""
    value = node.outputs[0] if node.outputs else None
    for _ in range(4):
        if value is None:
            return None
        if value.name in activations:
            return value.name
        nxt = g.sole_consumer(value)
        if nxt is None or not nxt.outputs:
            return None
        value = nxt.outputs[0]
    return None


def misfits(model: ir.Model, target: Target, weights: dict[str, WeightGrid],
            activations: dict[str, int]) -> list[Misfit]:
    """What of a sim of ``model`` with these weight grids and activation bitwidths (tensor names of
    ``model``) ``target`` cannot run (module docstring), in graph order."""
    if target.pairs is None and target.activation_bits is None and not target.per_channel_symmetric:
        return []
    out: list[Misfit] = []
    paired: set[str] = set()  # activations judged as a layer's output
    for node in model.graph:
        for value in node.inputs:
            if value is None or value.name not in weights:
                continue
            w = weights[value.name]
            label = g.node_label(node)
            if target.per_channel_symmetric and w.per_channel and not w.symmetric:
                out.append(Misfit(label, value.name, w.bitwidth, None,
                                  "per-channel weights must be symmetric (drop --param-asymmetric)"))
            grid = _output_grid(node, activations)
            a = activations[grid] if grid is not None else None
            if grid is not None:
                paired.add(grid)
            if target.pairs is None:
                continue
            if a is not None and (w.bitwidth, a) not in target.pairs:
                out.append(Misfit(label, value.name, w.bitwidth, a, f"W{w.bitwidth}A{a} is not among its kernels",
                                  grid))
            elif a is None and w.bitwidth not in (target.weight_bits or ()):
                out.append(Misfit(label, value.name, w.bitwidth, None, f"{w.bitwidth}-bit weights are not among "
                                                                       "its kernels"))
    if target.activation_bits is not None:
        for name, bits in activations.items():
            if name not in paired and bits not in target.activation_bits:
                out.append(Misfit(name, name, None, bits, f"{bits}-bit activations are not among its kernels"))
    return out


def describe(target: Target, found: list[Misfit], limit: int = 3) -> str:
    """One line: each reason with its first layers, and what the target runs."""
    by_reason: dict[str, list[str]] = {}
    for m in found:
        by_reason.setdefault(m.reason, []).append(m.layer)
    parts = []
    for reason, layers in by_reason.items():
        more = f" and {len(layers) - limit} more" if len(layers) > limit else ""
        parts.append(f"{reason} ({', '.join(layers[:limit])}{more})")
    acts = " or ".join(map(str, target.activation_bits or ()))
    return (f"--target {target.name} cannot run: {'; '.join(parts)}. It runs weighted layers at "
            f"{target.allowed()}, other activations at {acts} bits")


def check_placement(model: ir.Model, placement, options) -> None:
    """The usage error for a placement (quantsim's, before calibration) whose bitwidths or grids
    ``options.target`` cannot run, naming the layer, its pair, the option that set it (the last
    ``--bits`` rule naming the tensor, else --param-bw/--act-bw) and what the target runs."""
    target = get(options.target)
    weights = {p.tensor: WeightGrid(p.bitwidth, p.symmetric, p.axis is not None)
               for p in placement.params if p.kind == "weight"}
    activations = {a.tensor: a.bitwidth for a in placement.activations}
    found = misfits(model, target, weights, activations)
    if not found:
        return
    bits = next((m for m in found if m.act_bits is not None or m.reason.endswith("kernels")), None)
    fix = ""
    if bits is not None:
        fix = (f"; {bits.layer} has its bits from {_source(model, options, bits)}: give it bits the target runs "
               f"(--bits {bits.layer}=SPEC) or use --target generic")
    raise AimetCliError(describe(target, found) + fix, ErrorKind.USAGE)


def _source(model: ir.Model, options, misfit: Misfit) -> str:
    from aimetcli.quantsim.per_layer import matched_tensors

    for rule in reversed(options.bits):
        named = matched_tensors(model, rule.pattern, "--bits")
        if misfit.tensor in named or misfit.act_tensor in named:
            return f"--bits {rule.pattern}={rule.spec()}"
    return f"--param-bw {options.param_bw} --act-bw {options.act_bw}"


def check_export(model: ir.Model, target_name: str, params: dict, acts: dict) -> None:
    """Export's refusal (exit 1): encodings (``params``/``acts``: tensor name -> Encoding, names of
    the FP32 ``model``) that ``target_name`` cannot run. Biases (32-bit) are not weights here."""
    target = get(target_name)
    biases = {n.inputs[2].name for n in model.graph
              if len(n.inputs) > 2 and n.inputs[2] is not None and g.is_op(n, "Conv", "ConvTranspose", "Gemm")}
    weights = {name: WeightGrid(e.bitwidth, e.symmetric, e.per_channel) for name, e in params.items()
               if name not in biases}
    found = misfits(model, target, weights, {name: e.bitwidth for name, e in acts.items()})
    if found:
        raise AimetCliError(f"{describe(target, found)}; nothing written: quantize for this target "
                            f"(quantsim --target {target.name}) or export with --target generic", ErrorKind.UNSUPPORTED)


def _nbits_matmuls(model: ir.Model, acts: dict, params: dict) -> int:
    """How many MatMuls onnxruntime's CPU provider (1.32) runs as MatMulNBits reading a 16-bit or
    float activation. It fuses a weight's DequantizeLinear of 8 bits or fewer into the MatMul that
    reads it (MatMulNBits) unless the MatMul's other input or its output is on an 8-bit grid (a QDQ
    MatMul: an integer kernel, or float), and at its default accuracy level (4) MatMulNBits
    requantizes that input to 8 bits at run time: a 16-bit or float activation there loses its extra
    bits (ViT-tiny W8A16, 34.2 dB against FP32 as simulated, 32.9 dB so deployed; 34.2 dB with level 1,
    at about 1.3x the latency). The fusion needs the weight to be a MatMul's second input."""
    hit = 0
    for node in model.graph:
        if not g.is_op(node, "MatMul") or len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            continue
        read = input_grid(node.inputs[0], acts)
        w = params.get(node.inputs[1].name)
        if w is None or w.bitwidth > 8 or node.inputs[0].name in params:
            continue
        out = acts.get(node.outputs[0].name)
        if (read is None or read[1].bitwidth > 8) and (out is None or out.bitwidth > 8):
            hit += 1
    return hit


def onnxruntime_session_options(model: ir.Model, acts: dict, params: dict) -> dict[str, str]:
    """The session config entries (key -> value, for ``SessionOptions.add_session_config_entry``) that
    model_qdq.onnx needs on onnxruntime's CPU provider to compute what its sim computes: the
    MatMulNBits accuracy level 1 where :func:`_nbits_matmuls` finds any. ptq's judge scores the
    deployed model with them (runtime.ADVISED), which changes only those MatMuls."""
    from aimetcli.runtime import MATMUL_NBITS_OPTION

    return {MATMUL_NBITS_OPTION: "1"} if _nbits_matmuls(model, acts, params) else {}


def onnxruntime_notes(model: ir.Model, acts: dict, params: dict) -> list[str]:
    """What a user deploying model_qdq.onnx on onnxruntime's CPU provider should set, and why
    (:func:`_nbits_matmuls`, :func:`onnxruntime_session_options`)."""
    from aimetcli.runtime import MATMUL_NBITS_OPTION

    hit = _nbits_matmuls(model, acts, params)
    if not hit:
        return []
    return [f"{hit} MatMul(s) read a 16-bit or float activation and a weight of 8 bits or fewer: onnxruntime's "
            f"CPU provider fuses them into MatMulNBits, which by default requantizes that activation to 8 bits; "
            f'create its session with the option {MATMUL_NBITS_OPTION}="1" to keep it (ViT-tiny W8A16: '
            f"32.9 -> 34.2 dB)"]
