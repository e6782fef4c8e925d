"""Operations written as several ONNX ops, which quantsim quantizes as one unit (at its output).

AIMET's ONNX graph passes (``aimet_onnx/graph_passes``: LayerNormalization, RMSNormalization,
...) disable the output quantizers inside such patterns; these are the ones real exports carry
(see :mod:`aimetcli.quantsim.placement` for why each matters). Each matcher starts at one op,
follows sole consumers, and returns the ops whose outputs stay float: all but the unit's last.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.verdict import Verdict, skip

T = TypeVar("T")

# ops whose output is on the grid of their first input (values moved, none computed)
SAME_GRID_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Slice", "Gather",
                 "Expand", "Split", "Dropout")


def input_grid(value: ir.Value | None, activations: Mapping[str, T]) -> tuple[str, T] | None:
    """The tensor whose grid ``value`` is on and that grid (``activations``' entry), through data
    movement (SAME_GRID_OPS); None when float."""
    while value is not None:
        if value.name in activations:
            return value.name, activations[value.name]
        node = value.producer()
        if not g.is_op(node, *SAME_GRID_OPS):
            return None
        value = node.inputs[0]
    return None


def _next(value: ir.Value, op: str, *, other_constant: bool = False) -> ir.Node | None:
    """The sole reader of ``value`` when it is an ``op`` (whose other input is a constant, if asked)."""
    node = g.sole_consumer(value)
    if not g.is_op(node, op):
        return None
    if other_constant and not any(_is_static(v) for v in node.inputs if v is not value):
        return None
    return node


def _is_static(value: ir.Value | None) -> bool:
    """A constant, or one moved by data-movement ops (paddle2onnx reshapes LayerNorm's gamma at run time)."""
    for _ in range(4):
        if value is None:
            return False
        if g.constant(value) is not None:
            return True
        node = value.producer()
        if not g.is_op(node, *SAME_GRID_OPS) or any(g.constant(v) is None for v in node.inputs[1:] if v):
            return False
        value = node.inputs[0]
    return False


def _decomposed_layernorm(mean: ir.Node) -> list[ir.Node] | None:
    """The ops of a LayerNormalization written out, starting at its first ReduceMean, but
    the last (whose output is the unit's): ``d = x - ReduceMean(x)``,
    ``d / Sqrt(ReduceMean(Pow(d, 2)) + eps)``, then optionally ``* gamma`` and ``+ beta``."""
    x = mean.inputs[0]
    sub = _next(mean.outputs[0], "Sub")
    if sub is None or sub.inputs[0] is not x or sub.inputs[1] is not mean.outputs[0]:
        return None
    d = sub.outputs[0]
    readers = {use.node.op_type: use.node for use in d.uses() if g.is_op(use.node, "Pow", "Div")}
    if d.is_graph_output() or len(d.uses()) != 2 or len(readers) != 2:
        return None
    power, div = readers["Pow"], readers["Div"]
    if power.inputs[0] is not d or g.scalar_constant(power.inputs[1]) != 2.0:
        return None
    var = _next(power.outputs[0], "ReduceMean")
    eps = var and _next(var.outputs[0], "Add", other_constant=True)
    sqrt = eps and _next(eps.outputs[0], "Sqrt")
    if sqrt is None or div.inputs[0] is not d or div.inputs[1] is not sqrt.outputs[0]:
        return None
    inner = [mean, sub, power, var, eps, sqrt]
    gamma = _next(div.outputs[0], "Mul", other_constant=True)
    if gamma is not None:
        inner.append(div)
        if _next(gamma.outputs[0], "Add", other_constant=True) is not None:
            inner.append(gamma)
    return inner


def _erf_gelu(erf: ir.Node) -> list[ir.Node] | None:
    """The ops of a GELU ``x * 0.5 * (1 + erf(x / sqrt 2))`` around its Erf, but the last."""
    scale = erf.inputs[0].producer()
    if not g.is_op(scale, "Div", "Mul") or g.scalar_constant(scale.inputs[1]) is None:
        return None
    if g.sole_consumer(scale.outputs[0]) is not erf:
        return None
    x = scale.inputs[0]
    one = _next(erf.outputs[0], "Add", other_constant=True)
    times = one and _next(one.outputs[0], "Mul")
    if times is None:
        return None
    other = next((v for v in times.inputs if v is not one.outputs[0]), None)
    inner = [scale, erf, one]
    if other is x:  # (x * (1 + erf)) * 0.5
        if _next(times.outputs[0], "Mul", other_constant=True) is None:
            return None
        return inner + [times]
    half = other.producer() if other is not None else None
    if g.is_op(half, "Mul") and x in half.inputs and g.sole_consumer(half.outputs[0]) is times:
        return inner + [half]  # (x * 0.5) * (1 + erf)
    return None


def _separate_bias(layer: ir.Node) -> list[ir.Node] | None:
    """A Conv/ConvTranspose/Gemm/MatMul whose bias is a separate Add of a constant (paddle2onnx
    writes every conv bias so, torch every Linear on 3-D inputs): the layer, whose output a
    runtime never sees (it adds the bias in the layer's kernel)."""
    return [layer] if layer.outputs and _next(layer.outputs[0], "Add", other_constant=True) else None


# op types that start each pattern, the pattern, and the name given in the reason
_UNITS = ((("ReduceMean",), _decomposed_layernorm, "LayerNormalization"), (("Erf",), _erf_gelu, "GELU"),
          (("Conv", "ConvTranspose", "Gemm", "MatMul"), _separate_bias, "layer with bias"))


def unit_inner(graph: ir.Graph) -> dict[ir.Node, Verdict]:
    """Nodes inside an operation written as several ops (see the module doc), each with the
    verdict that skips its output."""
    inner: dict[ir.Node, Verdict] = {}
    for node in graph:
        for op_types, match, name in _UNITS:
            ops = match(node) if g.is_op(node, *op_types) else None
            for n in ops or ():
                inner[n] = skip(f"inside a {name} written as {len(ops) + 1} ops (float inside, as AIMET; quantized "
                                "at its output)")
    return inner
