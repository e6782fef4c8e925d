"""Replace Clip(0, a) ("ReLU6") by Relu where cross-layer scaling needs it.

ReLU6 does not commute with per-channel scaling (min(6, x/s) != min(6, x)/s), so a
chain through it cannot be equalized exactly. Like AIMET we replace it by ReLU,
which changes the function only where activations exceeded 6. Unlike AIMET we do
it only inside scaling chains: a Clip that bounds a tensor no chain crosses stays.

Recognised spellings: opset < 11 with ``min``/``max`` attributes; opset >= 11 with
min/max inputs given as initializers (Constant nodes are lifted first). An omitted
min or max is unbounded and not a ReLU6.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g


def clip_bounds(node: ir.Node, opset: int) -> tuple[float, float] | None:
    """(min, max) of a Clip when both are known constants, else None."""
    if not g.is_op(node, "Clip"):
        return None
    if opset < 11:
        lo = node.attributes.get_float("min", float("-inf"))
        hi = node.attributes.get_float("max", float("inf"))
        return float(lo), float(hi)
    bounds = []
    for idx, default in ((1, float("-inf")), (2, float("inf"))):
        v = node.inputs[idx] if len(node.inputs) > idx else None
        if v is None:
            bounds.append(default)
            continue
        arr = g.constant(v)
        if arr is None or arr.size != 1:
            return None
        bounds.append(float(np.asarray(arr, np.float64).reshape(-1)[0]))
    return bounds[0], bounds[1]


def is_relu_n(node: ir.Node, opset: int) -> bool:
    """Clip(0, a) with finite a > 0: ReLU6 and its kin."""
    b = clip_bounds(node, opset)
    return b is not None and b[0] == 0.0 and np.isfinite(b[1]) and b[1] > 0


class ReplaceRelu6Pass(ir.passes.InPlacePass):
    """Replace the given Clip(0, a) nodes by Relu (same output value and name)."""

    def __init__(self, clips: Iterable[ir.Node]):
        super().__init__()
        self.clips = list(clips)
        self.replaced = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for clip in self.clips:
            graph = clip.graph
            relu = ir.Node("", "Relu", inputs=[clip.inputs[0]], name=clip.name or None)
            graph.insert_before(clip, relu)
            out = clip.outputs[0]
            name, shape, typ = out.name, out.shape, out.type
            out.replace_all_uses_with(relu.outputs[0], replace_graph_outputs=True)
            bounds = [v for v in clip.inputs[1:] if v is not None]
            graph.remove(clip, safe=True)
            relu.outputs[0].name, relu.outputs[0].shape, relu.outputs[0].type = name, shape, typ
            g.remove_unused_initializers(graph, bounds)
            self.replaced += 1
        return ir.passes.PassResult(model, bool(self.replaced))
