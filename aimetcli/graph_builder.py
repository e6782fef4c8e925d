"""Graphs aimetcli builds for onnxruntime, on onnx-ir.

Every graph handed to onnxruntime besides a model itself (calibration reductions, bias
correction's means and joint graph, AdaRound's moments, tensors exposed as outputs) is an
onnx-ir copy of a model (:func:`editable_copy`: ``Model.clone``, which shares every tensor,
so a weight is never copied) extended by a :class:`Builder`. The result goes to
``runtime.Session`` as an ``ir.Model``; the session serializes it, once, with its big
weights set aside as arrays (``big_tensors.SplicedProto``). Nothing here imports onnx.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g

FLOAT = ir.DataType.FLOAT


def editable_copy(model: ir.Model, replace: Callable[[str, ir.TensorProtocol], ir.TensorProtocol | None] | None = None
                  ) -> ir.Model:
    """A copy of ``model`` to extend: nodes and values are new, tensors are shared (none is copied).

    ``replace(name, tensor)``: a main-graph initializer's new tensor in the copy, or None to keep
    it (the model's own is left alone)."""
    copy = model.clone()
    if replace is not None:
        for name, value in copy.graph.initializers.items():
            if value.const_value is not None:
                new = replace(name, value.const_value)
                if new is not None:
                    value.const_value = new
    return copy


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """The main graph's named values: inputs, initializers and node outputs."""
    values: dict[str, ir.Value] = {}
    for v in (*graph.inputs, *graph.initializers.values(), *(o for n in graph for o in n.outputs)):
        if v.name:
            values[v.name] = v
    return values


def taken_names(graph: ir.Graph) -> set[str]:
    """Every value name the main graph's nodes read or write, and its inputs' and initializers'."""
    names = {v.name for v in (*graph.inputs, *graph.initializers.values()) if v.name}
    for node in graph:
        names.update(v.name for v in (*node.inputs, *node.outputs) if v is not None and v.name)
    return names


def set_type(value: ir.Value, dtype: ir.DataType | None, shape: Sequence[int] | None = None) -> ir.Value:
    """``value`` declared as a tensor of ``dtype`` (unchanged when None) and ``shape`` (None:
    unknown, the shape it had is dropped)."""
    if dtype is not None:
        value.type = ir.TensorType(dtype)
    value.shape = ir.Shape(shape) if shape is not None else None
    return value


def insert_after_producer(graph: ir.Graph, value: ir.Value, nodes: Sequence[ir.Node]) -> None:
    """Insert ``nodes`` (in order) right after the node that produces ``value``, or first in the
    graph when ``value`` has no producer (a graph input or initializer), so the graph stays sorted."""
    producer = value.producer()
    if producer is not None:
        graph.insert_after(producer, nodes)
        return
    first = next(iter(graph), None)
    if first is None:
        graph.extend(nodes)
    else:
        graph.insert_before(first, nodes)


def add_outputs(graph: ir.Graph, values: Sequence[ir.Value], dtype: ir.DataType | None = FLOAT,
                shape: Sequence[int] | None = None) -> None:
    """Append ``values`` to the graph's outputs, declared as in :func:`set_type` (each once)."""
    present = {id(v) for v in graph.outputs}
    for value in values:
        if id(value) not in present:
            graph.outputs.append(set_type(value, dtype if dtype is not None else value.dtype, shape))
            present.add(id(value))


def expose(model: ir.Model, names: Sequence[str], *, in_place: bool = False) -> ir.Model:
    """A copy of ``model`` (:func:`editable_copy`) with ``names`` among its outputs (float, any
    shape); ``in_place``: ``model`` itself, extended (a model its caller made for this alone)."""
    copy = model if in_place else editable_copy(model)
    values = values_by_name(copy.graph)
    add_outputs(copy.graph, [values[n] for n in names], FLOAT)
    return copy


class Builder:
    """Makes nodes and initializers for ``graph``; inputs are values or the names of its values.

    Nodes are appended to the graph, or (``hold=True``) kept in :attr:`held` for the caller to
    place (:meth:`place_after`). New values take names not in ``taken`` (shared with the caller,
    who may reserve more).
    """

    def __init__(self, graph: ir.Graph, taken: set[str], *, hold: bool = False):
        self.graph = graph
        self.taken = taken
        self.values = values_by_name(graph)
        self.hold = hold
        self.held: list[ir.Node] = []
        self.made: set[int] = set()  # id() of every node made here

    def unique(self, base: str, template: Callable[[str, int], str] = lambda b, i: f"{b}_{i}") -> str:
        """``base``, else ``template(base, i)`` for i = 1, 2, ... until the name is free; then taken."""
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = template(base, i)
        self.taken.add(name)
        return name

    def value(self, ref: ir.Value | str) -> ir.Value:
        return ref if isinstance(ref, ir.Value) else self.values[ref]

    def node(self, op: str, inputs: Sequence[ir.Value | str], out: str | ir.Value, **attrs) -> ir.Value:
        """One ``op`` node (attributes sorted by name, as onnx.helper.make_node orders them) with
        one output: a new value named ``out``, or ``out`` itself when a value."""
        output = out if isinstance(out, ir.Value) else ir.Value(name=out)
        node = ir.node(op, [self.value(i) for i in inputs], dict(sorted(attrs.items())), outputs=[output])
        self.made.add(id(node))
        if self.hold:
            self.held.append(node)
        else:
            self.graph.append(node)
        if output.name:
            self.values[output.name] = output
        return output

    def initializer(self, array: np.ndarray, name: str) -> ir.Value:
        value = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                         shape=ir.Shape(array.shape), const_value=g.tensor(array, name))
        self.graph.register_initializer(value)
        self.values[name] = value
        return value

    def place_after(self, node: ir.Node | None) -> None:
        """Put the held nodes right after ``node`` (None: before the graph's first node)."""
        if not self.held:
            return
        if node is not None:
            self.graph.insert_after(node, self.held)
        elif len(self.graph):
            self.graph.insert_before(next(iter(self.graph)), self.held)
        else:
            self.graph.extend(self.held)
        self.held = []

    def redirect(self, old: ir.Value, new: ir.Value) -> None:
        """Every node not made here that reads ``old`` (subgraphs' outer references included)
        reads ``new`` instead."""
        for use in list(old.uses()):
            if id(use.node) not in self.made:
                use.node.replace_input_with(use.idx, new)


def same_tensor(a: ir.TensorProtocol | None, b: ir.TensorProtocol | None) -> bool:
    """Whether two tensors hold the same data (type, shape and values; a NaN counts as different).
    A lazy tensor counts as different: comparing would compute it (merging AdaRound's quantized
    copy into its pass graph computed every fake-quantized weight, 2 GB of them on the 2.25 GiB
    chain, where the pruned graph reads one or two)."""
    if a is b:
        return a is not None
    if a is None or b is None or a.dtype != b.dtype or a.shape != b.shape:
        return False
    if isinstance(a, ir.LazyTensor) or isinstance(b, ir.LazyTensor):
        return False
    return bool(np.array_equal(a.numpy(), b.numpy()))


def merge(joint: ir.Graph, other: ir.Graph, prefix: str) -> dict[str, ir.Value]:
    """Move ``other``'s nodes and initializers into ``joint`` (``other`` is left empty).

    ``other``'s nodes read ``joint``'s graph inputs of the same names and its initializers of the
    same name and data (:func:`same_tensor`); every other initializer, node output and node name
    of ``other`` gets ``prefix`` in front (its subgraphs' own values keep their names: their
    references to outer values follow the values). Returns {name in ``other``: its value in
    ``joint``}.
    """
    values = values_by_name(other)
    inputs = {v.name: v for v in joint.inputs}
    other.outputs.clear()
    for v in list(other.inputs):
        if v.name not in inputs:
            raise ValueError(f"{v.name!r} is no input of the graph merged into")
        v.replace_all_uses_with(inputs[v.name])
        values[v.name] = inputs[v.name]
    other.inputs.clear()
    for name in list(other.initializers):
        v = other.initializers.pop(name)
        mine = joint.initializers.get(name)
        if mine is not None and same_tensor(mine.const_value, v.const_value):
            v.replace_all_uses_with(mine)
            values[name] = mine
        else:
            v.name = prefix + name
            joint.register_initializer(v)
    nodes = list(other)
    other.remove(nodes)
    for node in nodes:
        if node.name:
            node.name = prefix + node.name
        for out in node.outputs:
            if out.name:
                out.name = prefix + out.name
    joint.extend(nodes)
    return values


def forget_value_info(graph: ir.Graph) -> None:
    """Drop the types and shapes of the graph's intermediate values (onnxruntime infers its own)."""
    ends = {id(v) for v in (*graph.inputs, *graph.outputs)}
    for node in graph:
        for v in node.outputs:
            if id(v) not in ends:
                v.type = None
                v.shape = None
