"""Fold BatchNormalization into the neighbouring Conv / ConvTranspose / Gemm / MatMul.

With s = gamma / sqrt(var + eps) and t = beta - mean * s (see kernels/bn.py):

* backward (layer -> BN):  W'_o = s_o W_o,   b'_o = s_o b_o + t_o   (any padding, groups)
* forward  (BN -> layer):  W'_oc = W_oc s_c, b'_o = b_o + sum_{c,k} W_oc[k] t_c
  only into Conv (group 1, no padding), Gemm (transA 0) and 2-D MatMul: zero padding
  in BN-output space is not zero in x space, so a padded Conv would change.

Backward folds are tried first, as AIMET does. A BN is left in place, with the
reason, when its parameters are not constants, when it runs in training mode, when
the layer's output also feeds something else (the BN output would no longer be the
only thing that changed), or when the channel counts do not line up. Weights shared
with other nodes are copied first, so the other readers keep the original values.

The folded BN's beta and gamma are kept per layer (bn_stats.py) for high-bias
absorption and analytical bias correction in later commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.bn_stats import BnStats, read_bn_stats, write_bn_stats
from aimetcli.kernels import bn as bn_math
from aimetcli.layers import Layer, as_layer, bias_array, check_bias, check_weight, normalize_gemm, write_bias
from aimetcli.verdict import Verdict, ok, skip


@dataclass
class FoldedPair:
    bn: str
    layer: str
    direction: str  # "backward" (layer -> BN) or "forward" (BN -> layer)
    channels: int


@dataclass
class SkippedBn:
    bn: str
    reason: str


@dataclass
class FoldBatchNormResult(ir.passes.PassResult):
    folded: list[FoldedPair] = field(default_factory=list)
    skipped: list[SkippedBn] = field(default_factory=list)


@dataclass
class _BnParams:
    s: np.ndarray
    t: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray


def _bn_params(bn: ir.Node) -> Verdict[_BnParams]:
    """s, t (and beta, gamma) of a foldable BN (the match), or why it cannot be folded.

    Each parameter tensor is read once (an initializer kept in protobuf form decodes
    its bytes on every read).
    """
    if bn.attributes.get_int("training_mode", 0):
        return skip("training_mode=1 (statistics computed at run time)")
    if bn.attributes.get_int("spatial", 1) == 0:
        return skip("spatial=0 (per-element statistics)")
    if len(bn.inputs) < 5:
        return skip("fewer than 5 inputs")
    arrays = []
    for idx, what in zip(range(1, 5), ("scale", "bias", "mean", "var")):
        v = bn.inputs[idx]
        arr = g.constant(v)
        if arr is None:
            return skip(f"its {what} ({v.name if v is not None else 'missing'}) is not a constant")
        if not g.is_float_dtype(arr):
            return skip(f"its {what} is {arr.dtype}, not floating point")
        arrays.append(arr)
    for extra in bn.outputs[1:]:
        if extra.uses() or extra.is_graph_output():
            return skip("its running-statistics outputs are used")
    if all(a.shape == arrays[0].shape for a in arrays):  # as always: one float64 block, one test
        block = np.array(arrays, np.float64).reshape(4, -1)
        finite = np.isfinite(block).all()
        gamma, beta, mean, var = block
    else:
        gamma, beta, mean, var = (np.asarray(a, np.float64).reshape(-1) for a in arrays)
        finite = all(np.isfinite(a).all() for a in (gamma, beta, mean, var))
    eps = bn.attributes.get_float("epsilon", 1e-5)
    if not finite:
        return skip("its parameters contain NaN or Inf")
    if (var + eps <= 0).any():
        return skip("variance + epsilon is not positive in some channel (invalid statistics)")
    s, t = bn_math.bn_scale_shift(gamma, beta, mean, var, eps)
    return ok(_BnParams(s=s, t=t, beta=beta, gamma=gamma))


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _backward(bn: ir.Node, n: int) -> Verdict[Layer]:
    """The layer ``bn`` folds into backward (the match), or why it cannot."""
    producer = bn.inputs[0].producer()
    layer = as_layer(producer)
    if layer is None:
        what = producer.op_type if producer is not None else "a graph input"
        return skip(f"fed by {what}, not Conv/ConvTranspose/Gemm/MatMul")
    if g.sole_consumer(layer.output) is not bn:
        return skip(f"output of {layer.name} also feeds other nodes or the graph output")
    weight = check_weight(layer)
    if not weight:
        return weight
    w = layer.weight_array()
    if layer.out_channels(w) != n:
        return skip(f"{layer.name} has {layer.out_channels(w)} output channels, BN has {n}")
    if layer.op_type == "MatMul" and _rank(layer.node.inputs[0]) != 2:
        return skip(f"MatMul {layer.name} input is not known to be 2-D (BN would normalise another axis)")
    bias = check_bias(layer, w)
    return ok(layer) if bias else bias


def _forward(bn: ir.Node, n: int) -> Verdict[Layer]:
    """The layer ``bn`` folds into forward (the match), or why it cannot."""
    consumer = g.sole_consumer(bn.outputs[0])
    if consumer is None:
        return skip("its output feeds several nodes or the graph output")
    layer = as_layer(consumer)
    if layer is None:
        return skip(f"followed by {consumer.op_type}, not Conv/Gemm/MatMul")
    if consumer.inputs[0] is not bn.outputs[0]:
        return skip(f"it feeds {layer.name} as a weight, not as data")
    if layer.op_type == "ConvTranspose":
        return skip(f"followed by ConvTranspose {layer.name} (not folded forward, as in AIMET)")
    if layer.pads_input:
        return skip(f"followed by {layer.name} which pads its input (zero padding would not be exact)")
    if layer.groups != 1:
        return skip(f"followed by grouped Conv {layer.name} (group={layer.groups})")
    weight = check_weight(layer)
    if not weight:
        return weight
    w = layer.weight_array()
    if layer.in_channels(w) != n:
        return skip(f"{layer.name} has {layer.in_channels(w)} input channels, BN has {n}")
    if layer.op_type == "MatMul" and _rank(consumer.inputs[0]) != 2:
        return skip(f"MatMul {layer.name} input is not known to be 2-D")
    bias = check_bias(layer, w)
    return ok(layer) if bias else bias


def _fold_site(bn: ir.Node) -> Verdict[tuple[_BnParams, str, Layer]]:
    """(the BN's s and t, "backward" or "forward", the layer it folds into), backward first as
    AIMET folds; or why it folds into neither."""
    found = _bn_params(bn)
    if not found:
        return found
    n = found.match.s.size
    back = _backward(bn, n)
    if back:
        return ok((found.match, "backward", back.match))
    forward = _forward(bn, n)
    if forward:
        return ok((found.match, "forward", forward.match))
    return skip(f"backward: {back.reason}; forward: {forward.reason}")


def left_bns(model: ir.Model) -> tuple[list[str], list[SkippedBn]]:
    """The main graph's BatchNormalization nodes as fold-bn would find them, nothing changed:
    (the labels of those it folds, those it leaves with the reason: :func:`_fold_site`)."""
    folds, left = [], []
    for bn in model.graph:
        if g.is_op(bn, "BatchNormalization"):
            site = _fold_site(bn)
            if site:
                folds.append(g.node_label(bn))
            else:
                left.append(SkippedBn(g.node_label(bn), site.reason))
    return folds, left


class FoldBatchNormPass(ir.passes.InPlacePass):
    """Fold every foldable BatchNormalization of the main graph."""

    def call(self, model: ir.Model) -> FoldBatchNormResult:
        graph = model.graph
        names = g.Names(model)
        stats = read_bn_stats(model)
        result = FoldBatchNormResult(model, modified=False)
        for sub in graph.subgraphs():
            for node in sub:
                if g.is_op(node, "BatchNormalization"):
                    result.skipped.append(SkippedBn(g.node_label(node), "inside a subgraph (If/Loop/Scan); left as is"))
        for bn in list(graph):
            if not g.is_op(bn, "BatchNormalization"):
                continue
            label = g.node_label(bn)
            site = _fold_site(bn)
            if not site:
                result.skipped.append(SkippedBn(label, site.reason))
                continue
            params, direction, layer = site.match
            if direction == "backward":
                out_name = self._fold_backward(graph, names, bn, layer, params)
                stats[out_name] = BnStats(params.beta.copy(), params.gamma.copy(), label)
            else:
                self._fold_forward(graph, names, bn, layer, params)
            result.folded.append(FoldedPair(label, layer.name, direction, params.s.size))
        if result.folded:
            write_bn_stats(model, stats)
            result.modified = True
        return result

    @staticmethod
    def _fold_backward(graph: ir.Graph, names: g.Names, bn: ir.Node, layer: Layer, p: _BnParams) -> str:
        if layer.op_type == "Gemm":
            normalize_gemm(layer, graph, names)
        w_value = g.private_constant(graph, names, layer.node, 1)
        w = w_value.const_value.numpy()
        b = bias_array(layer, w)
        _set_constant(w_value, bn_math.scale_output_channels(
            w, p.s, spec=layer.spec, groups=layer.groups, out_dtype=w.dtype))
        write_bias(layer, graph, names, b * p.s + p.t, w.dtype)
        params = list(bn.inputs[1:])
        g.bypass(bn, layer.output)
        g.remove_unused_initializers(graph, params)
        return layer.output.name

    @staticmethod
    def _fold_forward(graph: ir.Graph, names: g.Names, bn: ir.Node, layer: Layer, p: _BnParams) -> None:
        if layer.op_type == "Gemm":
            normalize_gemm(layer, graph, names)
        w_value = g.private_constant(graph, names, layer.node, 1)
        w = w_value.const_value.numpy()
        b = bias_array(layer, w) + layer.apply_to_constant(w, p.t)
        _set_constant(w_value, bn_math.scale_input_channels(
            w, p.s, spec=layer.spec, groups=layer.groups, out_dtype=w.dtype))
        layer.node.replace_input_with(0, bn.inputs[0])
        write_bias(layer, graph, names, b, w.dtype)
        params = list(bn.inputs[1:])
        graph.remove(bn, safe=True)
        g.remove_unused_initializers(graph, params)


def _set_constant(value: ir.Value, array: np.ndarray) -> None:
    """``graph.set_constant`` for a numpy array: ``ir.Tensor`` directly, as ``ir.tensor`` would
    make it (``ir.tensor`` first tests the array against a runtime protocol, ~40 us a call)."""
    value.const_value = ir.Tensor(array, name=value.name)
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(value.const_value.dtype)
