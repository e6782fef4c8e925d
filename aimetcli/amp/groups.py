"""Quantizer groups, their candidates, and what a configuration costs.

A group is what mixed precision sets as one (AIMET's quantizer groups): a weighted layer's
weight quantizer with the quantizer of its output (the layer's output, or where a fused
activation or bias Add ends: Conv -> Relu is quantized after the Relu); every other activation
quantizer (the model input, an Add, a Concat, a pooling output) is a group of its own, whose
candidates are the candidates' activation bitwidths. A candidate is ``(param_bw, act_bw)``;
``None`` for both is float (the group's quantizers left out, as ``--exclude`` does).

Cost of a configuration, relative to every layer at 8-bit weights and 8-bit inputs:

    bit-operations = sum over layers of MACs x weight bits x input activation bits
    relative       = bit-operations / sum over layers of MACs x 8 x 8

with a float tensor counted as 32 bits and a layer's input bits those of the quantizer its data
input is on (through data movement such as Reshape); and the model size in bytes of its weights,
sum of elements x bits / 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.kernels.amp_search import Candidate, ordered
from aimetcli.layers import as_layer
from aimetcli.quantsim.units import SAME_GRID_OPS

FLOAT_BITS = 32


@dataclass
class Group:
    """One group: its weight and activation tensors (either may be None) and its candidates,
    cheapest first, float last."""

    name: str
    weight: str | None
    activation: str | None
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "layer" if self.weight is not None else "activation"


@dataclass
class LayerCost:
    """A weighted layer as the cost model sees it."""

    name: str
    weight: str
    input: str | None  # the quantized tensor its data input is on; None: float
    macs: int  # per sample
    weight_elements: int


def _output_tensor(node: ir.Node, quantized: set[str]) -> str | None:
    """The quantized tensor that ends a layer's output: its own output, or up to three sole
    readers further through ops with one non-constant input (Relu, Clip, a bias Add)."""
    value = node.outputs[0]
    for _ in range(4):
        if value.name in quantized:
            return value.name
        nxt = g.sole_consumer(value)
        if nxt is None or not nxt.outputs or value.is_graph_output():
            return None
        if sum(1 for v in nxt.inputs if v is not None and g.constant(v) is None) != 1:
            return None
        value = nxt.outputs[0]
    return None


def _input_tensor(value: ir.Value | None, quantized: set[str]) -> str | None:
    while value is not None:
        if value.name in quantized:
            return value.name
        node = value.producer()
        if not g.is_op(node, *SAME_GRID_OPS) or not node.inputs:
            return None
        value = node.inputs[0]
    return None


def find_groups(model: ir.Model, activations: list[str], weights: list[str],
                candidates: tuple[Candidate, ...]) -> tuple[list[Group], list[LayerCost]]:
    """The groups of a model whose quantizers are on ``activations`` and ``weights`` (tensor
    names, as placed and calibrated at the base bitwidth), in model order; and its layers for the
    cost model (MACs filled in by :func:`count_macs`)."""
    quantized, weighted = set(activations), set(weights)
    groups: list[Group] = []
    layers: list[LayerCost] = []
    claimed: set[str] = set()
    candidates = tuple(ordered(candidates))
    act_candidates = ordered(Candidate(None, c.act_bw) if not c.is_float else c for c in candidates)
    for node in model.graph:
        layer = as_layer(node)
        w = layer.weight if layer is not None else None
        if layer is None or w is None or w.name is None or g.constant(w) is None:
            continue
        arr = g.constant(w)
        assert arr is not None
        layers.append(LayerCost(layer.name, w.name, _input_tensor(node.inputs[0], quantized), 0, int(arr.size)))
        if w.name not in weighted:
            continue
        out = _output_tensor(node, quantized)
        if out in claimed:
            out = None
        own = candidates if out is not None else ordered(Candidate(c.param_bw, None) if not c.is_float else c
                                                         for c in candidates)
        groups.append(Group(layer.name, w.name, out, list(own)))
        if out is not None:
            claimed.add(out)
    for tensor in activations:
        if tensor not in claimed:
            groups.append(Group(tensor, None, tensor, list(act_candidates)))
    return groups, layers


def count_macs(model: ir.Model, layers: list[LayerCost], feeds: dict) -> None:
    """Fill each layer's MACs per sample from one FP32 run on ``feeds`` (one sample): output
    elements x weight elements per output channel."""
    from aimetcli import runtime
    from aimetcli.graph_builder import expose

    by_name = {}
    for node in model.graph:
        layer = as_layer(node)
        if layer is not None and layer.weight is not None and layer.weight.name:
            by_name[layer.weight.name] = layer
    names = [by_name[la.weight].output.name or "" for la in layers]
    if not names:
        return
    outs = runtime.Session(expose(model, list(dict.fromkeys(names))), runtime.MEASURE).run(feeds, names)
    for la, out in zip(layers, outs):
        layer = by_name[la.weight]
        arr = g.constant(layer.weight)
        assert arr is not None
        per_channel = arr.size // max(1, arr.shape[layer.spec.out_axis])
        batch = out.shape[0] if out.ndim > 0 and out.shape[0] > 0 else 1
        la.macs = int(np.asarray(out).size // batch) * int(per_channel)


@dataclass
class Cost:
    relative_bitops: float
    weight_bytes: float


def bits_of(groups: list[Group], config: list[int]) -> tuple[dict[str, int | None], dict[str, int | None]]:
    """(weight tensor -> bits, activation tensor -> bits) of a configuration (an index into each
    group's candidates); None: float."""
    wbits: dict[str, int | None] = {}
    abits: dict[str, int | None] = {}
    for grp, i in zip(groups, config):
        c = grp.candidates[i]
        if grp.weight is not None:
            wbits[grp.weight] = c.param_bw
        if grp.activation is not None:
            abits[grp.activation] = c.act_bw
    return wbits, abits


def cost(groups: list[Group], layers: list[LayerCost], config: list[int]) -> Cost:
    """The module docstring's cost of ``config``."""
    wbits, abits = bits_of(groups, config)
    ops = ref = size = 0.0
    for la in layers:
        wb = wbits.get(la.weight) or FLOAT_BITS
        ab = (abits.get(la.input) if la.input is not None else None) or FLOAT_BITS
        ops += la.macs * wb * ab
        ref += la.macs * 64
        size += la.weight_elements * wb / 8
    return Cost(ops / ref if ref else 0.0, size)
