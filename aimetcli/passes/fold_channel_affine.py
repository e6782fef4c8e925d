"""Fold a constant per-channel Add, Sub or Mul that follows a layer into the layer's weights and bias.

Exporters write a layer's bias or a BatchNormalization as separate element-wise nodes:
paddle2onnx writes Conv -> Add(b) with b of shape [1, C, 1, 1] (every PP-OCR det and rec
model of the corpus: 33 to 75 of their Convs), tf2onnx leaves a BN as Mul(s) -> Add(t). With y the
layer's output and c a constant that varies along the output channels only (after numpy
broadcasting against y: every dim 1 but the channel axis, which is 1 or C):

* y + c:  b' = b + c
* y - c:  b' = b - c
* y * c:  W'_o = c_o W_o,  b' = c b      (the output channels of W, kernels/layout.py's table)

exact in real arithmetic for any padding and groups (the constant acts after the layer); in
float32 the sums and products round once more or less (within 1e-6 relative). A Conv followed
by a separate Add is no QDQ Conv for onnxruntime (its Conv -> Q fusion needs the Q right after
the Conv): model_qdq.onnx ran such Convs in float with their weights dequantized on every run,
and equalization saw no Conv -> Relu chain through the Add. A node stays in place with the
reason when the layer's output also feeds something else, when its constant is not per channel
or not finite, or when the layer's weight or bias cannot be rewritten. Add and Mul fold with
the layer's output on either side; Sub only as ``y - c``. A layer whose BN was folded before
keeps its statistics (bn_stats.py) under its new output name, moved as its output is:
beta + c, beta - c, or c beta and c gamma.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.bn_stats import BnStats, read_bn_stats, write_bn_stats
from aimetcli.kernels import bn as bn_math
from aimetcli.layers import Layer, as_layer, bias_array, check_rewrite, normalize_gemm, write_bias
from aimetcli.verdict import Verdict, ok, skip

__all__ = ["FoldChannelAffinePass", "FoldChannelAffineResult", "FoldedAffine", "SkippedAffine", "foldable"]

_OPS = ("Add", "Sub", "Mul")


@dataclass
class FoldedAffine:
    node: str
    op: str
    layer: str
    channels: int


@dataclass
class SkippedAffine:
    node: str
    reason: str


@dataclass
class FoldChannelAffineResult(ir.passes.PassResult):
    folded: list[FoldedAffine] = field(default_factory=list)
    skipped: list[SkippedAffine] = field(default_factory=list)


def _output_rank(layer: Layer, w: np.ndarray) -> int | None:
    if layer.op_type in ("Conv", "ConvTranspose"):
        return w.ndim  # N, C and one axis per kernel dim, as the weight
    if layer.op_type == "Gemm" or layer.input_known_2d:
        return 2
    return None


def per_channel(c: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``c``'s values along axis 1 of a rank-``rank`` tensor with ``channels`` channels, as a
    float64 vector of ``channels``, when broadcasting ``c`` against it varies along that axis
    alone (and keeps its shape); else None."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (channels,)).copy()


def check_affine(node: ir.Node) -> Verdict[tuple[Layer, np.ndarray]]:
    """The layer ``node`` folds into and its per-channel constant (the match), or why not.
    Only called on an Add / Sub / Mul one of whose inputs is a constant."""
    x, c_value = node.inputs[0], node.inputs[1]
    if g.constant(x) is not None:
        if node.op_type == "Sub":
            return skip("subtracts the layer's output from a constant")
        x, c_value = c_value, x
    if x is None or c_value is None:
        return skip("an input is missing")
    layer = as_layer(x.producer())
    if layer is None:
        what = x.producer().op_type if x.producer() is not None else "a graph input"
        return skip(f"follows {what}, not Conv/ConvTranspose/Gemm/MatMul")
    if g.sole_consumer(layer.output) is not node:
        return skip(f"output of {layer.name} also feeds other nodes or the graph output")
    fits = check_rewrite(layer)
    if not fits:
        return fits
    c = g.constant(c_value)
    assert c is not None
    if not g.is_float_dtype(c) or not np.isfinite(c).all():
        return skip(f"its constant {c_value.name} is not finite floating point")
    w = layer.weight_array()
    rank = _output_rank(layer, w)
    if rank is None:
        return skip(f"MatMul {layer.name} input is not known to be 2-D")
    vec = per_channel(c, rank, layer.out_channels(w))
    if vec is None:
        return skip(f"its constant {c_value.name} of shape {list(c.shape)} is not one value per output channel "
                    f"of {layer.name}")
    return ok((layer, vec))


def _is_candidate(node: ir.Node) -> bool:
    """An Add / Sub / Mul of a constant and a layer's output (not a MatMul's of 3-D inputs: no bias slot)."""
    if not g.is_op(node, *_OPS) or len(node.inputs) != 2 or all(g.constant(v) is None for v in node.inputs):
        return False
    producers = [v.producer() for v in node.inputs if v is not None and g.constant(v) is None]
    layer = as_layer(producers[0]) if producers else None
    return layer is not None and (layer.op_type != "MatMul" or layer.input_known_2d)


def foldable(model: ir.Model) -> int:
    """How many layers of ``model`` as it is (no change) :class:`FoldChannelAffinePass` would fold
    something into (the first node of a chain such as Mul -> Add counts the layer once)."""
    return sum(1 for node in model.graph if _is_candidate(node) and check_affine(node))


class FoldChannelAffinePass(ir.passes.InPlacePass):
    """Fold every foldable per-channel constant Add / Sub / Mul after a layer, in the main graph
    (a chain such as Mul -> Add folds node by node)."""

    def call(self, model: ir.Model) -> FoldChannelAffineResult:
        graph = model.graph
        names = g.Names(model)
        result = FoldChannelAffineResult(model, modified=False)
        stats = read_bn_stats(model)
        moved = False
        for node in list(graph):
            if not _is_candidate(node):
                continue
            found = check_affine(node)
            label = g.node_label(node)
            if not found:
                result.skipped.append(SkippedAffine(label, found.reason))
                continue
            layer, vec = found.match
            st = stats.pop(layer.output.name, None)  # a folded BN's N(beta, gamma^2) of the layer's output
            self._fold(graph, names, node, layer, vec)
            if st is not None:  # the output moved as the constant says, under the node's output name
                stats[layer.output.name] = BnStats(st.beta * vec, st.gamma * vec, st.bn) if node.op_type == "Mul" \
                    else BnStats(st.beta + (vec if node.op_type == "Add" else -vec), st.gamma, st.bn)
                moved = True
            result.folded.append(FoldedAffine(label, node.op_type, layer.name, vec.size))
        if moved:
            write_bn_stats(model, stats)
        result.modified = bool(result.folded)
        return result

    @staticmethod
    def _fold(graph: ir.Graph, names: g.Names, node: ir.Node, layer: Layer, vec: np.ndarray) -> None:
        if layer.op_type == "Gemm":
            normalize_gemm(layer, graph, names)
        w_value = g.private_constant(graph, names, layer.node, 1)
        w = w_value.const_value.numpy()
        b = bias_array(layer, w)
        if node.op_type == "Mul":
            g.set_constant(w_value, bn_math.scale_output_channels(w, vec, spec=layer.spec, groups=layer.groups,
                                                                  out_dtype=w.dtype))
            b = b * vec
        else:
            b = b + vec if node.op_type == "Add" else b - vec
        write_bias(layer, graph, names, b, w.dtype)
        constants = [v for v in node.inputs if v is not None and g.constant(v) is not None]
        g.bypass(node, layer.output)
        g.remove_unused_initializers(graph, constants)
