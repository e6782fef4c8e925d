"""One sim for every mixed-precision configuration, its choices fed as graph inputs.

A weight ``W`` quantsim would quantize becomes a graph input: each run feeds it fake-quantized
at the configuration's bitwidth (``kernels.quant.fake_quantize``, which equals quantsim's
QuantizeLinear -> DequantizeLinear [-> Max/Min] chain bit for bit), or as it is for float. The
readers of an activation ``x`` read

    If(on[x, b1]) then Q_b1(x) else If(on[x, b2]) then Q_b2(x) else ... Identity(x)

with ``Q_b`` the chain quantsim inserts for ``x``'s grid at bitwidth ``b`` (built by
``quantsim/insert.py``) and ``on[x, b]`` boolean scalar graph inputs. onnxruntime runs only the
branch taken, so a run costs about what the plain sim of that configuration costs (an earlier
version selected with Where between every chain, or one 16-bit chain with fed grids and a
Where for float, and ran 2-3x slower than the plain sim: Where reads both of its inputs in
full). One onnxruntime session then scores every configuration with different feeds (as
``aimetcli analyze`` does), where AIMET's AMP recomputes its sim's encodings for each.

A bias a runtime stores as int32 on the grid input scale x weight scale
(``quantsim/bias_grid.py``) is fed too: its grid depends on the bitwidths of the layer's input
and weight and on whether its output is quantized, so each configuration gets the bias the
plain sim of that configuration stores.

Every grid is fixed before the search: weights from the weights at each bitwidth, activations
calibrated at each activation bitwidth with the weights at the base bitwidth (what quantsim does
for a uniform sim). A plain sim with per-layer bitwidths calibrates each activation with the
weights upstream at their own bitwidths, so where a configuration raises a weight's bitwidth,
the activation grids downstream differ by that weight's rounding; ptq therefore rebuilds and
scores the chosen configuration as a plain sim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.amp.groups import Group
from aimetcli.kernels.quant import Encoding, fake_quantize
from aimetcli.quantsim.bias_grid import BiasSite, bias_sites
from aimetcli.quantsim.insert import activation_chain, reroute


@dataclass
class BiasFeed:
    """A fed bias: the layer's site, its float values, the grids its input and weight may take
    (by bitwidth), and the arrays fed so far by (input bits, weight bits, output quantized)."""

    site: BiasSite
    values: np.ndarray
    input_grids: dict[int, Encoding]
    weight_grids: dict[int, Encoding]
    fed: dict[tuple, np.ndarray] = field(default_factory=dict)

    def array(self, bits: dict[str, int | None]) -> np.ndarray:
        """The bias the plain sim of the configuration ``bits`` stores."""
        xb, wb = bits.get(self.site.input), bits.get(self.site.weight)
        reached = any(bits.get(t) is not None for t in self.site.chain)
        key = (xb, wb, reached)
        if key not in self.fed:
            x = None if xb is None else self.input_grids.get(xb)
            w = None if wb is None else self.weight_grids.get(wb)
            grid = self.site.grid_of(x, w, reached)
            self.fed[key] = self.values if grid is None else fake_quantize(self.values, grid)
        return self.fed[key]


@dataclass
class SwitchableSim:
    """The model, the weights it is fed (by bitwidth; None: float) and its activations' chains."""

    model: ir.Model
    weights: dict[str, dict[int | None, np.ndarray]] = field(default_factory=dict)  # tensor -> bits -> array
    weight_inputs: dict[str, str] = field(default_factory=dict)  # tensor -> input name
    switches: dict[str, dict[int, str]] = field(default_factory=dict)  # activation -> bits -> input name
    switched: dict[str, str] = field(default_factory=dict)  # tensor -> the value its readers read now
    biases: dict[str, BiasFeed] = field(default_factory=dict)  # input name -> the bias fed there

    def feeds(self, bits: dict[str, int | None]) -> dict[str, np.ndarray]:
        """The feeds giving each tensor of ``bits`` its bitwidth (None: float); a tensor not in
        ``bits`` stays float."""
        out: dict[str, np.ndarray] = {}
        for tensor, name in self.weight_inputs.items():
            by_bits = self.weights[tensor]
            out[name] = by_bits.get(bits.get(tensor), by_bits[None])
        for tensor, by_bits in self.switches.items():
            chosen = bits.get(tensor)
            for b, name in by_bits.items():
                out[name] = np.array(chosen == b)
        for name, feed in self.biases.items():
            out[name] = feed.array(bits)
        return out


def _values(graph: ir.Graph) -> dict[str, ir.Value]:
    values = {v.name: v for v in graph.inputs if v.name}
    for node in graph:
        for v in node.outputs:
            if v.name:
                values[v.name] = v
    return values


def _input(graph: ir.Graph, names: g.Names, base: str, dtype: ir.DataType, shape: list[int]) -> ir.Value:
    value = ir.Value(name=names.new(base), type=ir.TensorType(dtype), shape=ir.Shape(shape))
    graph.inputs.append(value)
    return value


def build_switchable(model: ir.Model, groups: list[Group], weights: dict[str, dict[int, Encoding]],
                     activations: dict[str, dict[int, Encoding]], fixed: dict[str, Encoding] | None = None
                     ) -> SwitchableSim:
    """Make ``model`` (an FP32 model at opset 21, for 16-bit QuantizeLinear; modified in place)
    the switchable sim of ``groups``: every bitwidth a group's candidates give its weight
    (``weights[tensor][bits]``) or its activation (``activations[tensor][bits]``) can be fed.
    ``fixed``: parameters quantized in every configuration (biases on a 32-bit grid, stored as
    integers, as quantsim does)."""
    from aimetcli.quantsim.insert import insert_param

    graph = model.graph
    names = g.Names(model)
    values = _values(graph)
    sim = SwitchableSim(model)
    sites = [s for s in bias_sites(graph) if s.bias not in (fixed or {})]  # before the graph changes
    order = {node: i for i, node in enumerate(graph)}
    for tensor, enc in (fixed or {}).items():
        insert_param(graph, names, graph.initializers[tensor], enc, store_integers=True, order=order)
    for site in sites:
        if site.input in activations and site.weight in weights:
            _feed_bias(graph, names, site, activations[site.input], weights[site.weight], sim)
    for grp in groups:
        if grp.weight is not None:
            _feed_weight(graph, names, grp, weights.get(grp.weight, {}), sim)
        if grp.activation is not None:
            wanted = {c.act_bw for c in grp.candidates} - {None}
            grids = {b: e for b, e in activations.get(grp.activation, {}).items() if b in wanted}
            if grids:
                _chain(graph, names, values[grp.activation], grids, sim)
    return sim


def _feed_weight(graph: ir.Graph, names: g.Names, grp: Group, grids: dict[int, Encoding], sim: SwitchableSim) -> None:
    """Replace the weight by a graph input; its fake-quantized arrays by bitwidth go to ``sim``."""
    tensor = grp.weight or ""
    value = graph.initializers[tensor]
    w = np.asarray(value.const_value.numpy(), np.float32)
    wanted = {c.param_bw for c in grp.candidates} - {None}
    arrays: dict[int | None, np.ndarray] = {None: w}
    for b, enc in grids.items():
        if b in wanted:
            arrays[b] = fake_quantize(w, enc)
    fed = _input(graph, names, f"aimetcli_amp_weight/{tensor}", ir.DataType.FLOAT, list(w.shape))
    for use in list(value.uses()):
        use.node.replace_input_with(use.idx, fed)
    graph.initializers.pop(tensor)
    sim.weights[tensor] = arrays
    sim.weight_inputs[tensor] = fed.name or ""
    sim.switched[tensor] = fed.name or ""


def _feed_bias(graph: ir.Graph, names: g.Names, site: BiasSite, input_grids: dict[int, Encoding],
               weight_grids: dict[int, Encoding], sim: SwitchableSim) -> None:
    """Replace the bias by a graph input fed per configuration (:class:`BiasFeed`)."""
    value = graph.initializers[site.bias]
    b = np.asarray(value.const_value.numpy(), np.float32)
    fed = _input(graph, names, f"aimetcli_amp_bias/{site.bias}", ir.DataType.FLOAT, list(b.shape))
    for use in list(value.uses()):
        use.node.replace_input_with(use.idx, fed)
    graph.initializers.pop(site.bias)
    sim.biases[fed.name or ""] = BiasFeed(site, b, dict(input_grids), dict(weight_grids))


def _chain(graph: ir.Graph, names: g.Names, value: ir.Value, grids: dict[int, Encoding],
           sim: SwitchableSim) -> None:
    """The If cascade of activation ``value`` (module docstring), its readers rewired to it."""
    tensor = value.name or ""
    readers = list(value.uses())
    ident = ir.Node("", "Identity", [value], name=names.new(f"{tensor}_amp_float"))
    ident.outputs[0].name = names.new(f"{tensor}_amp_as_float")
    otherwise = ir.Graph([], [ident.outputs[0]], nodes=[ident], name=names.new(f"{tensor}_amp_float_branch"))
    sim.switches[tensor] = {}
    node = None
    for b in sorted(grids, reverse=True):
        nodes, final, _ = activation_chain(graph, names, value, grids[b])
        then = ir.Graph([], [final], nodes=nodes, name=names.new(f"{tensor}_amp_{b}_bit_branch"))
        on = _input(graph, names, f"aimetcli_amp_on/{tensor}/{b}", ir.DataType.BOOL, [])
        sim.switches[tensor][b] = on.name or ""
        node = ir.Node("", "If", [on], attributes=[ir.AttrGraph("then_branch", then),
                                                  ir.AttrGraph("else_branch", otherwise)],
                       name=names.new(f"{tensor}_amp_switch_{b}"))
        out = node.outputs[0]
        out.name = names.new(f"{tensor}_amp_{b}_or_less")
        out.type, out.shape = ir.TensorType(ir.DataType.FLOAT), value.shape
        if b != min(grids):  # the next If (a smaller bitwidth) is this one's else branch
            otherwise = ir.Graph([], [out], nodes=[node], name=names.new(f"{tensor}_amp_below_{b}"))
    assert node is not None
    out = node.outputs[0]
    reroute(graph, names, value, readers, out, [node])
    sim.switched[tensor] = out.name or ""
