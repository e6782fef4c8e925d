"""Scaling chains: the matches cross-layer scaling, ReLU6 replacement and high-bias absorption
work on (each pass finds them itself, on the model it is given).

A *chain* is a run of weighted layers L0 -> L1 -> ... where each layer's output is read by
exactly one node, either the next layer (as its data input) or one activation that commutes
with positive per-channel scaling (Relu, LeakyRelu, PRelu with any slope since
PRelu(x/s) = PRelu(x)/s for s > 0, and Clip(0, a) once replaced by Relu) whose output is
read only by the next layer. A chain ends where a tensor branches (Add, Concat, several
readers), at a graph output, at any other op, or where weights are not constants; the
reason is recorded (:class:`ChainStop`).

ReLU6 spellings (:func:`clip_bounds`): opset < 11 with ``min``/``max`` attributes; opset >= 11
with min/max inputs given as initializers (Constant nodes are lifted first). An omitted min or
max is unbounded and not a ReLU6.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.layers import Layer, as_layer, check_rewrite
from aimetcli.verdict import Verdict, ok, skip

SCALING_ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu")


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



@dataclass
class Link:
    activation: str | None  # op type between the layers, None when directly connected
    node: ir.Node | None


@dataclass
class Chain:
    layers: list[Layer]
    links: list[Link]


@dataclass
class ChainStop:
    layer: str
    reason: str


def _next_link(l1: Layer, opset: int, through_relu6: bool) -> Verdict[tuple[Layer, Link]]:
    """The layer after ``l1`` in a chain and the link to it (the match), or why the chain stops at ``l1``."""
    out = l1.output
    consumer = g.sole_consumer(out)
    if consumer is None:
        n = len(out.uses())
        return skip("its output is a graph output" if out.is_graph_output() else f"its output has {n} readers")
    link = Link(None, None)
    nxt = consumer
    if as_layer(consumer) is None:
        op = consumer.op_type
        allowed = g.is_op(consumer, *SCALING_ACTIVATIONS)
        if g.is_op(consumer, "Clip") and is_relu_n(consumer, opset):
            if not through_relu6:
                return skip("followed by ReLU6 (kept with --keep-relu6)")
            allowed = True
        if not allowed:
            return skip(f"followed by {op}, which does not commute with scaling or ends the chain")
        link = Link(op, consumer)
        nxt = g.sole_consumer(consumer.outputs[0])
        if nxt is None:
            return skip(f"the {op} output has {len(consumer.outputs[0].uses())} readers or is a graph output")
    l2 = as_layer(nxt)
    if l2 is None:
        return skip(f"followed by {nxt.op_type}" + (f" after {link.activation}" if link.activation else ""))
    if nxt.inputs[0] is not (link.node.outputs[0] if link.node else out):
        return skip(f"feeds {l2.name} as a weight")
    rewrite = check_rewrite(l2)
    if not rewrite:
        return skip(f"next layer: {rewrite.reason}")
    if l1.out_channels(l1.weight_array()) != l2.in_channels(l2.weight_array()):
        return skip(f"channels of {l1.name} and {l2.name} do not line up")
    return ok((l2, link))


def find_chains(model: ir.Model, *, through_relu6: bool) -> tuple[list[Chain], list[ChainStop]]:
    """All maximal scaling chains of the main graph, and where each one stopped."""
    opset = g.opset_version(model)
    nxt: dict[int, tuple[Layer, Link]] = {}
    layers: dict[int, Layer] = {}
    stops: list[ChainStop] = []
    targets: set[int] = set()
    for node in model.graph:
        layer = as_layer(node)
        if layer is None:
            continue
        rewrite = check_rewrite(layer)
        if not rewrite:
            stops.append(ChainStop(layer.name, rewrite.reason))
            continue
        layers[id(node)] = layer
        found = _next_link(layer, opset, through_relu6)
        if not found:
            stops.append(ChainStop(layer.name, found.reason))
            continue
        l2, link = found.match
        nxt[id(node)] = (l2, link)
        targets.add(id(l2.node))
    chains = []
    for key, layer in layers.items():
        if key in targets or key not in nxt:
            continue
        chain = Chain([layer], [])
        cur = key
        while cur in nxt:
            l2, link = nxt[cur]
            l2 = layers.get(id(l2.node), l2)
            chain.layers.append(l2)
            chain.links.append(link)
            cur = id(l2.node)
        chains.append(chain)
    return chains, stops
