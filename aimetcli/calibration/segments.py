"""Run a model in segments that end at chosen tensors, over cached activations.

The nodes are split, in topological order, into consecutive segments, each ending
with the node that produces one of the ``cut`` tensors. Segment k is a small
model whose inputs are the tensors it reads from earlier segments (or the graph
inputs) and whose outputs are the tensors later segments read. Running segment k
over every batch before segment k+1 lets a caller look at (and change) a cut
tensor for the whole data set before anything downstream sees it, at a total
cost of one pass over the model: this is what makes sequential bias correction
linear in depth.

Memory: the live tensors between two segments, for all batches (reported by
:attr:`SegmentRunner.peak_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from aimetcli.calibration import runner


def _subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names read inside a node's subgraphs (If/Loop/Scan bodies)."""
    refs: set[str] = set()
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs = [attr.g]
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs = list(attr.graphs)
        else:
            continue
        for sub in graphs:
            defined = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for n in sub.node:
                refs |= {x for x in n.input if x and x not in defined}
                refs |= _subgraph_refs(n) - defined
                defined |= set(n.output)
    return refs


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    return {x for x in node.input if x} | _subgraph_refs(node)


@dataclass
class Segment:
    nodes: list[onnx.NodeProto]
    inputs: list[str]
    outputs: list[str]
    cuts: list[str]


@dataclass
class SegmentRunner:
    model: onnx.ModelProto
    cuts: list[str]  # tensors to stop after (any order; a node producing several stops once)
    segments: list[Segment] = field(default_factory=list)
    peak_bytes: int = 0
    optimization: str = "basic"  # graph optimizations inside a segment ("all" is fine without QDQ nodes)

    def __post_init__(self) -> None:
        graph = self.model.graph
        inits = {t.name for t in graph.initializer}
        graph_inputs = [i.name for i in graph.input if i.name not in inits]
        producer_seg: dict[str, int] = {name: -1 for name in graph_inputs}
        cut_set = set(self.cuts)
        current: list[onnx.NodeProto] = []
        groups: list[tuple[list[onnx.NodeProto], list[str]]] = []
        for node in graph.node:
            current.append(node)
            hit = [o for o in node.output if o in cut_set]
            if hit:
                groups.append((current, hit))
                current = []
        if current:
            groups.append((current, []))
        readers: dict[str, set[int]] = {}
        for k, (nodes, _) in enumerate(groups):
            for node in nodes:
                for o in node.output:
                    producer_seg[o] = k
            for node in nodes:
                for x in _node_inputs(node):
                    if x in inits:
                        continue
                    readers.setdefault(x, set()).add(k)
        graph_outputs = {o.name for o in graph.output}
        for k, (nodes, cuts) in enumerate(groups):
            produced = {o for n in nodes for o in n.output}
            needed = sorted({x for n in nodes for x in _node_inputs(n)} - produced - inits)
            outs = sorted(o for o in produced if any(r > k for r in readers.get(o, ())) or o in cuts
                          or o in graph_outputs)
            self.segments.append(Segment(nodes, needed, outs, cuts))
        self._last_reader = {name: max(ks) for name, ks in readers.items()}
        self._types = self._elem_types()

    def _elem_types(self) -> dict[str, onnx.TypeProto]:
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model)
        except Exception:
            inferred = self.model
        types = {}
        for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
            types[v.name] = v.type
        return types

    def _value_info(self, name: str) -> onnx.ValueInfoProto:
        vi = onnx.ValueInfoProto(name=name)
        t = self._types.get(name)
        if t is not None and t.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = t.tensor_type.elem_type
        else:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        return vi

    def _segment_model(self, seg: Segment) -> onnx.ModelProto:
        used = {x for n in seg.nodes for x in _node_inputs(n)}
        graph = onnx.helper.make_graph(
            seg.nodes, "segment",
            [self._value_info(x) for x in seg.inputs],
            [self._value_info(x) for x in seg.outputs],
            [t for t in self.model.graph.initializer if t.name in used],
        )
        m = onnx.helper.make_model(graph, opset_imports=self.model.opset_import)
        m.ir_version = self.model.ir_version
        return m

    def run(self, paths: dict[str, list[dict[str, np.ndarray]]],
            on_cut: Callable[[str, dict[str, list[np.ndarray]]], None],
            progress: runner.Progress | None = None) -> None:
        """Run every segment over every batch of every path.

        ``paths`` maps a path name to its batches of graph-input feeds (e.g. a float
        path and a quantized path through the same segments). After the segment that
        produces cut tensor T has run, ``on_cut(T, {path: per-batch arrays})`` may
        change those arrays (in place or by replacing list items) before any later
        segment reads them.
        """
        caches: dict[str, dict[str, list[np.ndarray]]] = {}
        for path, batches in paths.items():
            cache: dict[str, list[np.ndarray]] = {}
            for feeds in batches:
                for name, arr in feeds.items():
                    cache.setdefault(name, []).append(arr)
            caches[path] = cache
        for k, seg in enumerate(self.segments):
            if seg.nodes:
                session = runner.make_session(self._segment_model(seg), optimization=self.optimization)
                for cache in caches.values():
                    n_batches = len(next(iter(cache.values()))) if cache else 0
                    results: dict[str, list[np.ndarray]] = {o: [] for o in seg.outputs}
                    for i in range(n_batches):
                        feeds = {x: cache[x][i] for x in seg.inputs}
                        for name, value in zip(seg.outputs, runner.run(session, feeds, seg.outputs)):
                            results[name].append(value)
                    cache.update(results)
            self.peak_bytes = max(self.peak_bytes, sum(a.nbytes for cache in caches.values()
                                                       for arrs in cache.values() for a in arrs))
            for cut in seg.cuts:
                on_cut(cut, {path: cache[cut] for path, cache in caches.items()})
            for cache in caches.values():
                for name in list(cache):
                    if self._last_reader.get(name, -1) <= k:
                        del cache[name]
            if progress is not None:
                progress(1)
