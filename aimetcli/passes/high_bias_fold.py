"""High-bias absorption (AIMET's "high bias fold"), where it is exact; math in kernels/cle.py.

For each neighbouring pair L1 -> [Relu | nothing] -> L2 of the scaling chains whose
L1 output z has BN statistics (carried by fold-bn, rescaled by cross-layer scaling),
z ~ N(beta, gamma^2) per channel:
    c = max(0, beta - 3|gamma|)   (Relu)   or   c = beta   (nothing)
    b1 -= c;  b2 += sum over L2's kernel taps of W2 c;  beta -= c in the carried statistics.

Why it is exact, and where. L2 reads a = act(z) and computes y = W2 * a + b2. After
the rewrite it reads a' = act(z - c), and
    W2 * a' + b2 + (W2 c summed over the taps) = W2 * (a' + c) + b2   = y
provided (1) a' + c = a at every position L2 reads, and (2) every output position of
L2 sums every kernel tap over a position of a (so the constant compensation matches
the constant shift, tap for tap):
(1) nothing between: z - c + c = z, exact for every c. Relu: Relu(z - c) + c = Relu(z)
    where z >= c >= 0; with the 3-sigma margin z < c at under Phi(-3) = 0.13% of
    positions (AIMET's argument), where the output moves by at most c.
(2) Gemm, 2-D MatMul and a Conv without padding read real input at every tap. A Conv
    that zero-pads its input does not: a padded tap reads 0 in both models, where the
    compensation assumes it reads a - c, so the border moves by W2 c over the padded
    taps (the padding would have to hold -c). ConvTranspose sums a different number of
    taps at different output positions. Such pairs are skipped with the reason, as is
    any pair across another activation (LeakyRelu/PRelu are left alone, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.bn_stats import BnStats, read_bn_stats, write_bn_stats
from aimetcli.kernels import cle
from aimetcli.layers import Layer, bias_array, write_bias
from aimetcli.passes.chains import find_chains
from aimetcli.verdict import OK, Verdict, skip


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
    """Absorb high biases along every scaling chain (passes/chains.py; chains stop at a ReLU6)."""

    def call(self, model: ir.Model) -> HighBiasFoldResult:
        result = HighBiasFoldResult(model, modified=False)
        stats = read_bn_stats(model)
        graph = model.graph
        names = g.Names(model)
        chains, _ = find_chains(model, through_relu6=False)
        for chain in chains:
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
                st = stats[key]
                c = cle.absorbable_bias(st.beta, st.gamma, through_relu=link.activation == "Relu")
                if not np.any(c != 0):
                    continue
                exact = _check_exact(l2)
                if not exact:
                    result.skipped.append((l1.name, f"{l2.name} {exact.reason}"))
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


def _check_exact(l2: Layer) -> Verdict:
    """ok when absorbing a constant into ``l2``'s input is exact (condition (2) above), else why
    not; the reason is read after the layer's name."""
    if l2.spec.bias_slot is None and not l2.input_known_2d:
        return skip("is a MatMul whose input is not known to be 2-D")
    if l2.op_type == "ConvTranspose":
        return skip("is a ConvTranspose, which sums different numbers of kernel taps at different output positions")
    if l2.pads_input:
        return skip("zero-pads its input (exact only if the padding held the absorbed amount too)")
    return OK
