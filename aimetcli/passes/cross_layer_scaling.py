"""Cross-layer scaling: equalize per-channel weight ranges of consecutive layers.

Math in kernels/cle.py; the pass finds its scaling chains itself (passes/chains.py, where
a chain is defined), and records where each one stopped for ``-v``.

Within a chain, conv -> depthwise conv -> conv triples use the three-layer rule,
other neighbours the two-layer rule. Overlapping sets are rescaled in turn until
every scale factor is within 1e-7 of 1 (the paper's iterate-to-convergence), so
equalizing an equalized model changes nothing. Sweeps alternate between forward and
backward along the plan: a change then travels the length of a chain in one sweep
either way, so fewer sweeps reach convergence (docs/design.md, "Measurements behind code
choices").

Conv (any groups), ConvTranspose, Gemm and 2-D MatMul are handled; AIMET skips the
fully connected ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.bn_stats import BnStats, read_bn_stats, write_bn_stats
from aimetcli.kernels import bn as bn_math
from aimetcli.kernels import cle
from aimetcli.layers import Layer, bias_array
from aimetcli.passes.chains import Chain, ChainStop, find_chains

MAX_ITERATIONS = 200
TOLERANCE = 1e-7  # max |log s|: a second equalize then moves no weight by more than 1e-7


def _is_depthwise(layer: Layer, w: np.ndarray) -> bool:
    return layer.op_type == "Conv" and w.shape[1] == 1 and layer.groups == w.shape[0] and layer.groups > 1


@dataclass
class _State:
    """Weights of one layer as float64 during the iterations."""

    layer: Layer
    w: np.ndarray
    b: np.ndarray
    out_scale: np.ndarray  # product of the factors its output channels were multiplied by
    version: int = 0  # bumped whenever the weights change
    owned: bool = False  # w may be overwritten: only this pass holds it (big weights scale in place)
    # per-channel max |w| (None: to compute). Scaling output channel o by s_o > 0 scales its
    # max by s_o exactly and leaves the per-input maxima unknown; scaling inputs likewise.
    _out_max: np.ndarray | None = None
    _in_max: np.ndarray | None = None

    def out_max(self) -> np.ndarray:
        if self._out_max is None:
            self._out_max = self.layer.per_out_channel_abs_max(self.w)
        return self._out_max

    def in_max(self) -> np.ndarray:
        if self._in_max is None:
            self._in_max = self.layer.per_in_channel_abs_max(self.w)
        return self._in_max

    def scale_out(self, s: np.ndarray) -> None:
        self.w = self.layer.scale_out(self.w, s, inplace=self.owned)
        self.owned = True
        self._out_max = None if self._out_max is None else self._out_max * s
        self._in_max = None

    def scale_in(self, s: np.ndarray) -> None:
        self.w = self.layer.scale_in(self.w, s, inplace=self.owned)
        self.owned = True
        self._in_max = None if self._in_max is None else self._in_max * s
        self._out_max = None


@dataclass
class ScalingSet:
    layers: list[str]
    kind: str  # "pair" or "triple"


@dataclass
class CrossLayerScalingResult(ir.passes.PassResult):
    chains: list[list[str]] = field(default_factory=list)  # layer names of each chain found
    stops: list[ChainStop] = field(default_factory=list)  # where each chain ended, and why
    sets: list[ScalingSet] = field(default_factory=list)
    iterations: int = 0


def scaling_sets(chain: Chain, states: dict[int, _State]) -> list[tuple[int, ...]]:
    """Index tuples into chain.layers: triples for conv-depthwise-conv, else pairs."""
    sets, i, n = [], 0, len(chain.layers)
    while i < n - 1:
        mid = states[id(chain.layers[i + 1].node)]
        if i + 2 < n and _is_depthwise(mid.layer, mid.w):
            sets.append((i, i + 1, i + 2))
            i += 2
        else:
            sets.append((i, i + 1))
            i += 1
    return sets


def _log_change(*factors: np.ndarray) -> float:
    return max((float(np.max(np.abs(np.log(f)))) for f in factors if f.size), default=0.0)


def _scale_pair(a: _State, b: _State) -> float:
    """Equalize a pair; returns max |log s| (nothing is changed when it is below TOLERANCE)."""
    s = cle.two_layer_scale(a.out_max(), b.in_max())
    change = _log_change(s)
    if change < TOLERANCE:
        return change
    a.scale_out(1.0 / s)
    a.b = a.b / s
    a.out_scale = a.out_scale / s
    b.scale_in(s)
    a.version += 1
    b.version += 1
    return change


def _scale_triple(a: _State, d: _State, c: _State) -> float:
    r1, r2, r3 = a.out_max(), d.out_max(), c.in_max()
    s12, s23 = cle.three_layer_scale(r1, r2, r3)
    change = _log_change(s12, s23)
    if change < TOLERANCE:
        return change
    a.scale_out(1.0 / s12)
    a.b = a.b / s12
    a.out_scale = a.out_scale / s12
    # depthwise: input channel i is output channel i
    d.scale_out(s12 / s23)
    d.b = d.b / s23
    d.out_scale = d.out_scale / s23
    c.scale_in(s23)
    for st in (a, d, c):
        st.version += 1
    return change


class CrossLayerScalingPass(ir.passes.InPlacePass):
    """Equalize every scaling chain of the main graph.

    ``relu6_replaced``: whether ReplaceRelu6Pass ran before (``equalize`` without
    --keep-relu6). It decides only the reason a chain is said to stop at a Clip(0, a) that is
    left: a chain is never scaled across one (ReLU6 does not commute with scaling).
    ``modified`` is True exactly when some weight changed; layers whose factors all stay
    within TOLERANCE of 1 are not written (a shared weight is then not copied either), so a
    second run changes nothing.
    """

    def __init__(self, *, relu6_replaced: bool = False):
        super().__init__()
        self.relu6_replaced = relu6_replaced

    def call(self, model: ir.Model) -> CrossLayerScalingResult:
        result = CrossLayerScalingResult(model, modified=False)
        found, result.stops = find_chains(model, through_relu6=self.relu6_replaced)
        chains = []
        for chain in found:
            clip = next((lk for lk in chain.links if lk.activation == "Clip"), None)
            if clip is None:
                chains.append(chain)
            else:  # only when ReplaceRelu6Pass did not run before
                result.stops.append(ChainStop(chain.layers[0].name, "crosses a ReLU6 (replace it by Relu first)"))
        result.chains = [[layer.name for layer in c.layers] for c in chains]
        if not chains:
            return result
        states: dict[int, _State] = {}
        for chain in chains:
            for layer in chain.layers:
                if id(layer.node) not in states:
                    wv = layer.weight
                    original = layer.weight_array()
                    w = bn_math.working_array(original)
                    # a copy is ours; so is a writable weight only this layer reads (written by an
                    # earlier pass, not read from the file): big weights are then scaled in place
                    sole = len(wv.uses()) == 1 and not wv.is_graph_output() and original.flags.writeable
                    states[id(layer.node)] = _State(layer, w, bias_array(layer, w), np.ones(layer.out_channels(w)),
                                                    owned=w is not original or sole)
        plan = []
        for chain in chains:
            for idx in scaling_sets(chain, states):
                members = [states[id(chain.layers[i].node)] for i in idx]
                plan.append(members)
                result.sets.append(ScalingSet([m.layer.name for m in members], "triple" if len(idx) == 3 else "pair"))
        # Sets are revisited only while a member changed since their last visit: chains
        # without overlapping sets settle after one sweep, overlapping ones iterate.
        seen: list[tuple[int, ...] | None] = [None] * len(plan)
        for it in range(MAX_ITERATIONS):
            worst = 0.0
            order = range(len(plan)) if it % 2 == 0 else range(len(plan) - 1, -1, -1)
            for k in order:
                members = plan[k]
                key = tuple(m.version for m in members)
                if seen[k] == key:
                    continue
                change = _scale_pair(*members) if len(members) == 2 else _scale_triple(*members)
                seen[k] = tuple(m.version for m in members)
                worst = max(worst, change)
            result.iterations = it + 1
            if worst < TOLERANCE:
                break
        changed = [st for st in states.values() if st.version]
        if changed:
            self._write_back(model, changed)
            result.modified = True
        return result

    @staticmethod
    def _write_back(model: ir.Model, states: list[_State]) -> None:
        from aimetcli.layers import write_bias

        graph = model.graph
        names = g.Names(model)
        stats = read_bn_stats(model)
        for st in states:
            layer = st.layer
            orig = layer.weight_array()
            wv = g.private_constant(graph, names, layer.node, 1)
            g.set_constant(wv, st.w.astype(orig.dtype, copy=False))
            if layer.bias is not None:  # scaling never creates a bias where there was none
                write_bias(layer, graph, names, st.b, orig.dtype)
            key = layer.output.name
            if key in stats and not np.allclose(st.out_scale, 1.0, rtol=0, atol=0):
                s = stats[key]
                stats[key] = BnStats(s.beta * st.out_scale, s.gamma * st.out_scale, s.bn)
        write_bn_stats(model, stats)
