"""High-bias absorption (AIMET's "high bias fold"), math in kernels/cle.py.

For each neighbouring pair L1 -> [Relu | nothing] -> L2 of the scaling chains whose
L1 output has BN statistics (carried by fold-bn, rescaled by cross-layer scaling):
    c = max(0, beta - 3|gamma|)   (Relu)   or   c = beta   (nothing)
    b1 -= c;  b2 += sum over kernel of W2 c;  beta -= c in the carried statistics.
Not exact: ReLU(x - c) + c differs from ReLU(x) where x < c, which the 3-sigma
margin makes rare. Pairs across LeakyRelu/PRelu are left alone, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.bn_stats import BnStats, read_bn_stats, write_bn_stats
from aimetcli.kernels import cle
from aimetcli.layers import bias_array, write_bias
from aimetcli.passes.cross_layer_scaling import Chain


@dataclass
class Absorbed:
    layer: str
    into: str
    channels: int  # channels with c > 0
    max_shift: float


@dataclass
class HighBiasFoldResult(ir.passes.PassResult):
    absorbed: list[Absorbed] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class HighBiasFoldPass(ir.passes.InPlacePass):
    def __init__(self, chains: list[Chain]):
        super().__init__()
        self.chains = chains

    def call(self, model: ir.Model) -> HighBiasFoldResult:
        result = HighBiasFoldResult(model, modified=False)
        stats = read_bn_stats(model)
        graph = model.graph
        names = g.Names(model)
        for chain in self.chains:
            for l1, link, l2 in zip(chain.layers, chain.links, chain.layers[1:]):
                key = l1.output.name
                if key not in stats:
                    result.skipped.append((l1.name, "no BN statistics for its output"))
                    continue
                if link.activation not in (None, "Relu"):
                    result.skipped.append((l1.name, f"{link.activation} between {l1.name} and {l2.name}"))
                    continue
                if l1.bias is None:
                    result.skipped.append((l1.name, "it has no bias to absorb"))
                    continue
                if l2.kind == "matmul" and (l2.node.inputs[0].shape is None or len(l2.node.inputs[0].shape) != 2):
                    result.skipped.append((l1.name, f"{l2.name} is a MatMul whose input is not known to be 2-D"))
                    continue
                st = stats[key]
                c = cle.absorbable_bias(st.beta, st.gamma, through_relu=link.activation == "Relu")
                if not np.any(c > 0) and link.activation == "Relu":
                    continue
                w1 = l1.weight_array()
                w2 = l2.weight_array()
                b1 = bias_array(l1, w1) - c
                b2 = bias_array(l2, w2) + l2.apply_to_constant(w2, c)
                write_bias(l1, graph, names, b1, w1.dtype)
                write_bias(l2, graph, names, b2, w2.dtype)
                stats[key] = BnStats(st.beta - c, st.gamma, st.bn)
                result.absorbed.append(Absorbed(l1.name, l2.name, int(np.count_nonzero(c)), float(np.max(np.abs(c)))))
        if result.absorbed:
            write_bn_stats(model, stats)
            result.modified = True
        return result
