"""Small helpers over onnx-ir shared by the passes.

The passes never rebuild lists of initializers or rescan the graph for consumers:
onnx-ir keeps use-def links, so every lookup here is O(uses of one value).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

ONNX_DOMAINS = ("", "ai.onnx")
# node metadata entry naming a node aimetcli inserted and export removes (quantsim/insert.py's
# narrow-grid clamps, quantsim/bias_grid.py's bias rounding); onnxruntime ignores it
ROLE_KEY = "aimetcli.role"


def is_op(node: ir.Node | None, *op_types: str) -> bool:
    return node is not None and node.domain in ONNX_DOMAINS and node.op_type in op_types


def node_label(node: ir.Node) -> str:
    """A name a user can find: the node name, else its first output's name."""
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs else None
    return f"{node.op_type}({out})" if out else node.op_type


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The value's array when it is an initializer, else None.

    Initializers that are also graph inputs (IR < 4 models) count as constants,
    as onnxruntime and onnxsim treat them.
    """
    if value is None or value.const_value is None or not value.is_initializer():
        return None
    return value.const_value.numpy()


def is_float_dtype(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "f" or arr.dtype.name == "bfloat16"


def sole_consumer(value: ir.Value) -> ir.Node | None:
    """The only node reading ``value``, or None when it branches or is a graph output."""
    if value.is_graph_output():
        return None
    uses = value.uses()
    if len(uses) != 1:
        return None
    return uses[0].node


class Names:
    """Hands out value names not used anywhere in the model (graph and subgraphs)."""

    def __init__(self, model: ir.Model):
        self._taken: set[str] = set()
        for graph in (model.graph, *model.graph.subgraphs()):
            for v in (*graph.inputs, *graph.initializers.values()):
                if v.name:
                    self._taken.add(v.name)
            for node in graph:
                for v in node.outputs:
                    if v.name:
                        self._taken.add(v.name)

    def new(self, base: str) -> str:
        base = base or "aimetcli"
        name, i = base, 1
        while name in self._taken:
            name = f"{base}_{i}"
            i += 1
        self._taken.add(name)
        return name


def tensor(array: np.ndarray, name: str) -> ir.Tensor:
    """An onnx-ir tensor over a numpy array (``ir.tensor``'s protocol checks cost ~40 us a call)."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:  # (np.ascontiguousarray would also make a 0-d array 1-d)
        array = np.ascontiguousarray(array).reshape(array.shape)
    return ir.Tensor(array, name=name)


def set_constant(value: ir.Value, array: np.ndarray) -> None:
    """Replace an initializer's data in place (name kept)."""
    value.const_value = tensor(array, value.name)
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(value.const_value.dtype)


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=tensor(array, name),
    )
    graph.register_initializer(value)
    return value


def private_constant(graph: ir.Graph, names: Names, node: ir.Node, index: int) -> ir.Value:
    """Make ``node.inputs[index]`` an initializer used by ``node`` alone.

    When other nodes (or graph inputs/outputs) share it, the node gets its own copy,
    so rewriting it cannot change what the other users see.
    """
    value = node.inputs[index]
    assert value is not None and value.const_value is not None
    if len(value.uses()) == 1 and not value.is_graph_output() and not value.is_graph_input():
        return value
    copy = add_initializer(graph, names.new(f"{value.name}_{node.name or node.op_type}"), value.const_value.numpy().copy())
    node.replace_input_with(index, copy)
    return copy


def shared_constants(graph: ir.Graph) -> list[tuple[str, list[tuple[ir.Node, int]]]]:
    """Per initializer read by more than one node input: (its name, those (node, input index) slots)."""
    return [(value.name, [(node, index) for node, index in value.uses()]) for value in graph.initializers.values()
            if len(value.uses()) > 1 and value.name is not None]


def reshare(graph: ir.Graph, groups: list[tuple[str, list[tuple[ir.Node, int]]]]) -> list[str]:
    """Read again one initializer at the slots of each of ``groups`` (:func:`shared_constants`
    before a rewrite that gave some slots copies: :func:`private_constant`) where every slot's
    constant has the same dtype, shape and values: a rewrite that treated every reader alike (a
    Siamese network's two branches scaled alike) leaves the model the size it was, the constant
    under its first name. Returns the names of the groups still apart (copies that differ)."""
    apart = []
    for name, slots in groups:
        values = [node.inputs[index] for node, index in slots]
        if any(v is None or v.const_value is None for v in values) or len({id(v) for v in values}) == 1:
            continue
        first = values[0]
        a = first.const_value.numpy()
        if not all(v.const_value.dtype == first.const_value.dtype and np.array_equal(v.const_value.numpy(), a)
                   for v in values[1:]):
            apart.append(name)
            continue
        for node, index in slots:
            node.replace_input_with(index, first)
        remove_unused_initializers(graph, values[1:])
        if name not in graph.initializers and first.name != name:
            first.name = name
    return apart


def bypass(node: ir.Node, replacement: ir.Value) -> None:
    """Remove a single-output ``node``, wiring its readers to ``replacement``.

    ``replacement`` takes over the removed output's name, so graph outputs and
    downstream tensor names seen by users stay the same.
    """
    graph = node.graph
    assert graph is not None
    out = node.outputs[0]
    out_name = out.name
    out.replace_all_uses_with(replacement, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    if out_name and replacement.name != out_name and not replacement.is_initializer() and not replacement.is_graph_input():
        replacement.name = out_name


def remove_unused_initializers(graph: ir.Graph, candidates: Iterable[ir.Value]) -> None:
    """Drop the given initializers once nothing reads them (checked per value, no rescans)."""
    for value in candidates:
        if value is None or not value.is_initializer() or value.uses() or value.is_graph_output():
            continue
        if value.name in graph.initializers and graph.initializers[value.name] is value:
            del graph.initializers[value.name]
            if value.is_graph_input():
                graph.inputs.remove(value)


def opset_version(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def fixed_dim(d: int | ir.SymbolicDim | None) -> int | None:
    """A declared dimension's size, or None when it is dynamic: a name, unknown, or a size
    <= 0 (legacy converters such as old paddle2onnx write -1 or 0 for an unknown size)."""
    return d if isinstance(d, int) and d > 0 else None


# ai.onnx.ml ops whose output has its input's shape (the ONNX-ML spec), and the output's element
# type: None for the input's. onnx's shape inference has no shape function for them.
_ONNX_ML_SAME_SHAPE = {"Scaler": ir.DataType.FLOAT, "Normalizer": ir.DataType.FLOAT, "Binarizer": None,
                       "Imputer": None}


def shapes_through_onnx_ml(model: ir.Model) -> bool:
    """Give the outputs of the main graph's same-shape ai.onnx.ml ops (an sklearn pipeline's Scaler
    before an MLP) their input's shape where it is known and theirs is not, so that a second shape
    inference reaches the layers after them. Returns whether any output changed."""
    changed = False
    for node in model.graph:
        kind = _ONNX_ML_SAME_SHAPE.get(node.op_type, "") if node.domain == "ai.onnx.ml" else ""
        if kind == "" or not node.inputs or node.inputs[0] is None or node.inputs[0].shape is None:
            continue
        out = node.outputs[0]
        if out.shape is None:
            out.shape = ir.Shape(node.inputs[0].shape)
            dtype = kind if kind is not None else node.inputs[0].dtype
            if out.type is None and dtype is not None:
                out.type = ir.TensorType(dtype)
            changed = True
    return changed


def free_unknown_dims(model: ir.Model) -> int:
    """Declare the main graph's input and output sizes <= 0 unknown (``fixed_dim``), as the
    ONNX spec spells it: onnxruntime refuses to feed any other size to a dim declared 0.
    Returns how many values changed."""
    changed = 0
    for value in (*model.graph.inputs, *model.graph.outputs):
        if value.shape is not None and any(isinstance(d, int) and d <= 0 for d in value.shape):
            value.shape = ir.Shape([d if fixed_dim(d) is not None or not isinstance(d, int) else None
                                    for d in value.shape])
            changed += 1
    return changed


def activation_bytes(model: ir.Model) -> int:
    """Bytes of all node outputs of one sample, from the shapes the model records (the leading
    dimension and unknown ones count 1; a value without a shape counts nothing)."""
    total = 0
    for node in model.graph:
        for value in node.outputs:
            if value.shape is None or value.dtype is None:
                continue
            dims = [fixed_dim(d) or 1 for d in value.shape.dims[1:]]
            total += math.prod(dims) * value.dtype.itemsize  # a float: sub-byte types count fractions
    return math.ceil(total)


def activations_declared(model: ir.Model) -> bool:
    """Whether the model records every node output's shape with every dimension but the leading one
    fixed: only then does :func:`activation_bytes` count a sample's activations in full."""
    return all(value.shape is not None and all(fixed_dim(d) is not None for d in value.shape.dims[1:])
               for node in model.graph for value in node.outputs)


# ops that only appear in models already quantized: the QDQ format (a quantsim or quantize_static
# output), and integer operators: onnxruntime's quantize_dynamic (DynamicQuantizeLinear feeding
# ConvInteger/MatMulInteger; com.microsoft's DynamicQuantizeMatMul, MatMulIntegerToFloat,
# DynamicQuantizeLSTM, QAttention) and quantize_static's QOperator format (QLinear*, QGemm)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
INTEGER_OPS = ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
               "DynamicQuantizeLSTM", "QAttention", "QEmbedLayerNormalization", "QGemm", "QLinearConv",
               "QLinearConvTranspose", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
               "QLinearLeakyRelu", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool",
               "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere")
QUANTIZED_OPS = QDQ_OPS + INTEGER_OPS


def quantized_nodes(model: ir.Model) -> int:
    """Nodes of the main graph that belong to a quantized model (any domain: com.microsoft has
    its own QuantizeLinear/DequantizeLinear)."""
    return sum(1 for node in model.graph if node.op_type in QUANTIZED_OPS)


def integer_op_types(model: ir.Model) -> list[str]:
    """The integer-operator op types (INTEGER_OPS) of the main graph, in order of first appearance."""
    return list(dict.fromkeys(node.op_type for node in model.graph if node.op_type in INTEGER_OPS))


def scalar_constant(value: ir.Value | None) -> float | None:
    """The value's only element when it is a one-element float or integer constant, else None."""
    arr = constant(value)
    if arr is None or arr.size != 1 or arr.dtype.kind not in "fiu":
        return None
    return float(arr.reshape(()))


def subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    """The graphs of ``node``'s attributes (If's branches, Loop's and Scan's bodies), not nested ones."""
    for attr in node.attributes.values():
        if attr.is_ref():
            continue
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.as_graph()
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.as_graphs()


def subgraph_node_count(node: ir.Node) -> int:
    """Nodes inside ``node``'s subgraphs (If branches, Loop/Scan bodies), nested ones included."""
    return sum(1 + subgraph_node_count(n) for graph in subgraphs(node) for n in graph)


def tensors_after(start: ir.Node, stop: ir.Node | None = None) -> set[str]:
    """The names of ``start``'s outputs and of every tensor computed from them, walking forward
    through every consumer but ``stop`` (not entered): what a change of ``start``'s outputs can
    reach, up to ``stop``. It follows uses, so a walk can only name too much, never too little,
    in the main graph (a consumer inside an If/Loop body is walked, the holder's outputs not)."""
    names: set[str] = set()
    seen: set[int] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        for out in node.outputs:
            if id(out) in seen:
                continue
            seen.add(id(out))
            if out.name is not None:
                names.add(out.name)
            todo.extend(use.node for use in out.uses() if use.node is not stop)
    return names


def downstream_of(model: ir.Model, labels: Iterable[str]) -> frozenset[str] | None:
    """:func:`tensors_after` each main-graph node labelled (:func:`node_label`) by ``labels``, all
    together: the tensors a change of those nodes can reach. None where that cannot be told: a
    label names no node or more than one, or the model holds subgraphs (a body's uses are not
    followed out of its holder)."""
    nodes: dict[str, ir.Node] = {}
    for node in model.graph:
        label = node_label(node)
        if label in nodes or subgraph_node_count(node):
            return None
        nodes[label] = node
    reached: set[str] = set()
    for label in labels:
        if label not in nodes:
            return None
        reached |= tensors_after(nodes[label])
    return frozenset(reached)


# ops whose weights make a network's bulk (what quantization is about)
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN")


@dataclass(frozen=True)
class ControlFlow:
    """The main graph's nodes that hold subgraphs, each with the number of nodes inside, and
    how many of those are weighted layers (WEIGHTED_OPS)."""

    holders: tuple[tuple[ir.Node, int], ...]
    weighted: int

    @property
    def nodes(self) -> int:
        return sum(n for _, n in self.holders)

    def describe(self, limit: int = 3) -> str:
        """``If 'branch' (120 nodes), Loop 'body' (4 nodes)``: the largest first, at most ``limit``."""
        ranked = sorted(self.holders, key=lambda h: -h[1])
        text = ", ".join(f"{node.op_type} '{node_label(node)}' ({count} nodes)" for node, count in ranked[:limit])
        return text + (f" and {len(ranked) - limit} more" if len(ranked) > limit else "")


def control_flow_nodes(model: ir.Model) -> ControlFlow | None:
    """The main graph's If/Loop/Scan (any node with a graph attribute) holding nodes, or None.

    Passes and quantizers here work on the main graph only; this names what they leave alone."""
    holders = [(node, count) for node in model.graph if (count := subgraph_node_count(node))]
    if not holders:
        return None
    weighted = sum(1 for sub in model.graph.subgraphs() for n in sub if is_op(n, *WEIGHTED_OPS))
    return ControlFlow(tuple(holders), weighted)
