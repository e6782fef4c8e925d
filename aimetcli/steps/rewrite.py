"""fold-bn, equalize and the weight-range view: the facade steps that rewrite a float model.

The techniques are passes (aimetcli/passes/); these steps run them in AIMET's order and sum
up what they did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import cast

import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.model_ops import ModelSource, as_model
from aimetcli.options import EqualizeOptions
from aimetcli.passes.fold_batchnorm import FoldBatchNormPass, FoldBatchNormResult
from aimetcli.passes.fold_channel_affine import FoldChannelAffinePass, FoldChannelAffineResult
from aimetcli.records import jsonable


@dataclass
class FoldBnSummary:
    folded: list
    skipped: list
    remaining_bn: int
    seconds: float
    # constant per-channel Add / Sub / Mul folded into the layer before them (a bias or a BN
    # spelled out), and those left with the reason (passes/fold_channel_affine.py)
    affine_folded: list = field(default_factory=list)
    affine_skipped: list = field(default_factory=list)

    def to_json(self) -> dict:
        return jsonable(self)


def fold_bn(model: ModelSource) -> tuple[FoldBatchNormResult, FoldBnSummary]:
    """Fold every foldable BatchNormalization, and every constant per-channel Add / Sub / Mul
    after a layer (a bias or a BN as exporters spell them out): before the BN folds (Conv -> Add
    -> BN) and after them (Conv -> BN -> Mul -> Add). An onnx-ir model is modified in place; the
    folded model is ``result.model`` (for a path or a protobuf, a new one)."""
    start = time.perf_counter()
    model = as_model(model)
    shared = g.shared_constants(model.graph)
    first = cast(FoldChannelAffineResult, FoldChannelAffinePass()(model))
    result = cast(FoldBatchNormResult, FoldBatchNormPass()(model))
    second = cast(FoldChannelAffineResult, FoldChannelAffinePass()(model))  # sees what the first left too
    g.reshare(model.graph, shared)  # a weight shared by layers folded alike stays one weight
    remaining = sum(1 for n in model.graph.all_nodes() if g.is_op(n, "BatchNormalization"))
    summary = FoldBnSummary(result.folded, result.skipped, remaining, time.perf_counter() - start,
                            first.folded + second.folded, second.skipped)
    return result, summary


@dataclass
class LayerRanges:
    layer: str
    op: str
    weight: str | None
    channels: int
    ranges: list[float]  # max |w| per output channel
    spread: float  # max/min of the non-zero ranges


def weight_ranges(model: ModelSource) -> list[LayerRanges]:
    """Per-output-channel weight ranges of every layer with constant float weights."""
    model = as_model(model)
    from aimetcli.kernels import cle
    from aimetcli.layers import as_layer, check_weight

    rows = []
    for node in model.graph:
        layer = as_layer(node)
        if layer is None or not check_weight(layer) or layer.weight is None:  # (ok: it has a weight)
            continue
        w = layer.weight_array()
        r = layer.per_out_channel_abs_max(w)
        rows.append(LayerRanges(layer.name, node.op_type, layer.weight.name, int(r.size), r.tolist(),
                                cle.range_spread(r)))
    return rows


@dataclass
class EqualizeSummary:
    folded_bn: int
    relu6_replaced: int
    chains: list[list[str]]
    scaling_sets: int
    iterations: int
    bias_absorbed: list
    stops: list
    ranges_before: list[LayerRanges]
    ranges_after: list[LayerRanges]
    seconds: float
    bias_skipped: list = field(default_factory=list)  # (layer, why its bias was not absorbed)
    model: ir.Model | None = field(default=None, repr=False)  # the equalized model; not in the JSON
    # the tensors whose FP32 values equalization changed (:func:`changed_activations`); None: unknown
    changed: frozenset[str] | None = field(default=None, repr=False)
    # shared weights (read by several layers) that the rewrites left as one copy a reader: the
    # readers were scaled differently (graph.reshare); copies scaled alike are shared again
    unshared: list[str] = field(default_factory=list)

    @property
    def median_spread_before(self) -> float:
        return _median([r.spread for r in self.ranges_before])

    @property
    def median_spread_after(self) -> float:
        return _median([r.spread for r in self.ranges_after])

    def to_json(self) -> dict:
        doc = jsonable(self)
        for key in ("ranges_before", "ranges_after"):
            for row in doc[key]:
                row.pop("ranges")
        doc["median_spread_before"] = self.median_spread_before
        doc["median_spread_after"] = self.median_spread_after
        return doc


def _median(xs: list[float]) -> float:
    import numpy as np

    return float(np.median(xs)) if xs else 1.0


def equalize(model: ModelSource, options: EqualizeOptions | None = None) -> EqualizeSummary:
    """AIMET's equalize_model on ONNX: BN fold, ReLU6 -> ReLU, cross-layer scaling, high-bias fold.
    An onnx-ir model is modified in place; the equalized model is ``summary.model``."""
    from aimetcli.passes.cross_layer_scaling import CrossLayerScalingPass, CrossLayerScalingResult
    from aimetcli.passes.high_bias_fold import HighBiasFoldPass, HighBiasFoldResult
    from aimetcli.passes.replace_relu6 import ReplaceRelu6Pass, ReplaceRelu6Result

    options = options or EqualizeOptions()
    start = time.perf_counter()
    model = as_model(model)
    shared = g.shared_constants(model.graph)
    fold_result, fold_summary = fold_bn(model)
    before = weight_ranges(model)  # after folding: what cross-layer scaling starts from
    relu6 = cast(ReplaceRelu6Result, ReplaceRelu6Pass()(model)) if options.replace_relu6 else None
    cls_result = cast(CrossLayerScalingResult, CrossLayerScalingPass(relu6_replaced=options.replace_relu6)(model)) \
        if options.cross_layer_scaling else None
    absorption = cast(HighBiasFoldResult, HighBiasFoldPass()(model)) if options.high_bias_fold else None
    unshared = g.reshare(model.graph, shared)
    after = weight_ranges(model)
    changed = None if fold_result.folded or fold_summary.affine_folded else changed_activations(
        model, [s.layers for s in cls_result.sets] if cls_result else [],
        [(a.layer, a.into) for a in absorption.absorbed] if absorption else [], relu6.replaced if relu6 else [])
    return EqualizeSummary(
        folded_bn=len(fold_result.folded),
        relu6_replaced=len(relu6.replaced) if relu6 else 0,
        chains=cls_result.chains if cls_result else [],
        scaling_sets=len(cls_result.sets) if cls_result else 0,
        iterations=cls_result.iterations if cls_result else 0,
        bias_absorbed=absorption.absorbed if absorption else [],
        stops=cls_result.stops if cls_result else [],
        ranges_before=before,
        ranges_after=after,
        seconds=time.perf_counter() - start,
        bias_skipped=absorption.skipped if absorption else [],
        model=model,
        changed=changed,
        unshared=unshared,
    )


def changed_activations(model: ir.Model, sets: list[list[str]], absorbed: list[tuple[str, str]],
                        relu6_replaced: list[str]) -> frozenset[str] | None:
    """The tensors whose FP32 values equalization changed, from what its passes did (nodes by
    :func:`graph.node_label`); None when a node named is not found.

    Cross-layer scaling divides output channel c of a set's layer i by s_c and multiplies layer
    i+1's input channel c by it: exact, it changes the tensors from layer i's output up to layer
    i+1's input and leaves every other tensor equal up to float rounding. High-bias absorption
    moves c from one layer's bias to the next one's: exact with no activation between them (it is
    only done for unpadded consumers then), so those tensors again; through a Relu only where the
    pre-activation never falls below c (AIMET's beta - 3 gamma), so there every tensor after the
    first layer is listed. A ReLU6 replaced by Relu changes its output wherever it clipped, and so
    every tensor after it. The tensors are walked forward from each layer's outputs to the next
    layer (or to the graph's outputs); a walk goes on through any branch, so it can only say too
    much.
    """
    nodes = {g.node_label(n): n for n in model.graph}
    changed: set[str] = set()
    scaled = [(names[i], names[i + 1]) for names in sets for i in range(len(names) - 1)]
    if any(name not in nodes for pair in scaled + absorbed for name in pair):
        return None
    for first, second in scaled:
        changed.update(g.tensors_after(nodes[first], nodes[second]))
    for first, second in absorbed:  # exact only with no activation between the two layers
        adjacent = any(use.node is nodes[second] for out in nodes[first].outputs for use in out.uses())
        changed.update(g.tensors_after(nodes[first], nodes[second] if adjacent else None))
    for relu in relu6_replaced:
        if relu not in nodes:
            return None
        changed.update(g.tensors_after(nodes[relu]))
    return frozenset(changed)
