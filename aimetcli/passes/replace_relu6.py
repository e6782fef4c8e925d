"""Replace Clip(0, a) ("ReLU6") by Relu where cross-layer scaling needs it.

ReLU6 does not commute with per-channel scaling (min(6, x/s) != min(6, x)/s), so a
chain through it cannot be equalized exactly. Like AIMET we replace it by ReLU,
which changes the function only where activations exceeded 6. Unlike AIMET we do
it only inside scaling chains: a Clip that bounds a tensor no chain crosses stays.

The pass finds the chains itself (passes/chains.py, which also says which Clip
spellings are a ReLU6).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.passes.chains import find_chains, is_relu_n


@dataclass
class ReplaceRelu6Result(ir.passes.PassResult):
    replaced: list[str] = field(default_factory=list)  # the Clip nodes now Relu


class ReplaceRelu6Pass(ir.passes.InPlacePass):
    """Replace by Relu (same output value and name) every Clip(0, a) a scaling chain crosses."""

    def call(self, model: ir.Model) -> ReplaceRelu6Result:
        result = ReplaceRelu6Result(model, modified=False)
        chains, _ = find_chains(model, through_relu6=True)
        opset = g.opset_version(model)
        clips = [lk.node for c in chains for lk in c.links if lk.node is not None and is_relu_n(lk.node, opset)]
        for clip in clips:
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
            result.replaced.append(g.node_label(relu))
        result.modified = bool(result.replaced)
        return result
