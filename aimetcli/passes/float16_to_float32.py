"""Upcast a model that computes in float16 or bfloat16 to float32, so it can be quantized.

quantsim places QuantizeLinear/DequantizeLinear on float32 tensors only (the QDQ scales
of the opsets it writes are float32), so a float16 model would come out of quantsim with
no quantizer at all. AIMET quantizes float32 models, and QNN/SNPE converters take the
float32 model beside its encodings. This pass rewrites, in every graph of the model:

* every float16/bfloat16 initializer to float32, value for value (float32 holds every
  float16 and bfloat16 value exactly);
* every value's element type (graph inputs and outputs included) to float32;
* the attributes that name or hold those types: ``to`` of Cast, ``dtype`` of the
  Random*/EyeLike ops, the tensor ``value`` of ConstantOfShape and Constant.

The model then computes the same function in float32: its outputs differ from the
float16 model's by float16's rounding, which float32 no longer applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

LOW_PRECISION = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_DTYPE_ATTRS = {"Cast": "to", "RandomNormal": "dtype", "RandomUniform": "dtype", "RandomNormalLike": "dtype",
                "RandomUniformLike": "dtype", "EyeLike": "dtype", "Bernoulli": "dtype", "Multinomial": "dtype"}
_TENSOR_ATTRS = {"ConstantOfShape": "value", "Constant": "value"}


def low_precision_types(model: ir.Model) -> set[ir.DataType]:
    """The float16/bfloat16 element types among the main graph's inputs, outputs and initializers."""
    graph = model.graph
    values = (*graph.inputs, *graph.outputs, *graph.initializers.values())
    return {v.dtype for v in values if v.dtype in LOW_PRECISION}


@dataclass
class Float16ToFloat32Result(ir.passes.PassResult):
    upcast_from: list[str] = field(default_factory=list)  # "float16", "bfloat16"
    tensors: int = 0  # initializers and tensor attributes converted
    values: int = 0  # values whose element type changed


def _float32(tensor) -> ir.Tensor:
    return ir.Tensor(np.asarray(tensor.numpy()).astype(np.float32), name=tensor.name)


class Float16ToFloat32Pass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> Float16ToFloat32Result:
        seen: set[ir.DataType] = set()
        tensors = values = 0
        for graph in model.graphs():
            for init in graph.initializers.values():
                if init.const_value is not None and init.const_value.dtype in LOW_PRECISION:
                    seen.add(init.const_value.dtype)
                    init.const_value = _float32(init.const_value)
                    tensors += 1
            for value in (*graph.inputs, *graph.initializers.values(), *(v for n in graph for v in n.outputs)):
                if value.dtype in LOW_PRECISION:
                    seen.add(value.dtype)
                    value.dtype = ir.DataType.FLOAT
                    values += 1
            for node in graph:
                if node.domain not in ("", "ai.onnx"):
                    continue
                name = _DTYPE_ATTRS.get(node.op_type)
                attr = node.attributes.get(name) if name else None
                if attr is not None and attr.type == ir.AttributeType.INT and attr.value in (int(t) for t in LOW_PRECISION):
                    seen.add(ir.DataType(attr.value))
                    node.attributes[name] = ir.AttrInt64(name, int(ir.DataType.FLOAT))
                name = _TENSOR_ATTRS.get(node.op_type)
                attr = node.attributes.get(name) if name else None
                if (attr is not None and attr.type == ir.AttributeType.TENSOR and not attr.is_ref()
                        and attr.value.dtype in LOW_PRECISION):
                    seen.add(attr.value.dtype)
                    node.attributes[name] = ir.AttrTensor(name, _float32(attr.value))
                    tensors += 1
        names = sorted(t.name.lower() for t in seen)
        return Float16ToFloat32Result(model, bool(seen), names, tensors, values)
