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
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from aimetcli import graph as g


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
        return ir.passes.PassResult(model, modified)
