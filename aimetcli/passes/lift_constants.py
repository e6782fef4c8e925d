"""Lift constant-producing nodes to initializers, so every pass sees weights the same way.

PaddlePaddle and some other exporters store weights (and Clip bounds) as
``Constant`` nodes; some Caffe2 exports build them with ``ConstantOfShape`` from a
constant shape. onnxruntime's quantizer then mistakes them for activations. Every
such tensor becomes an initializer of the same name; nothing else changes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from aimetcli import graph as g


class LiftConstantsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inner = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)
        modified = inner(model).modified
        graph = model.graph
        for node in list(graph):
            if not g.is_op(node, "ConstantOfShape") or node.outputs[0].is_graph_output():
                continue
            shape = g.constant(node.inputs[0])
            if shape is None:
                continue
            fill = node.attributes.get_tensor("value", None)
            value = fill.numpy().reshape(-1)[:1] if fill is not None else np.zeros(1, np.float32)
            array = np.full(tuple(int(d) for d in shape.reshape(-1)), value[0], dtype=value.dtype)
            out = node.outputs[0]
            name = out.name
            const = ir.Value(name=None, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                             const_value=ir.tensor(array))
            out.replace_all_uses_with(const)
            shape_value = node.inputs[0]
            graph.remove(node, safe=True)
            const.name = name
            const.const_value.name = name
            graph.register_initializer(const)
            g.remove_unused_initializers(graph, [shape_value])
            modified = True
        return ir.passes.PassResult(model, modified)
