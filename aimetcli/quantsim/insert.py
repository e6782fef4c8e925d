"""Phase three of quantsim: insert QuantizeLinear/DequantizeLinear for the encodings.

Activations:  T -> QuantizeLinear -> DequantizeLinear [-> Clip] -> every reader of T
Weights:      W -> QuantizeLinear -> DequantizeLinear [-> Max -> Min] -> readers (simulation), or
              W becomes its integers (same name, integer type) -> DequantizeLinear (deployment)
Biases:       on the grid a runtime derives (input scale x weight scale, quantsim/bias_grid.py):
              b -> Div -> Round -> Mul -> the layer (simulation), or its int32 integers ->
              DequantizeLinear (deployment); on the config's own 32-bit grid: stored integers

The model then runs on stock onnxruntime and computes exactly what the numpy
reference (kernels/quant.py: fake_quantize) computes: for grids narrower than their
integer container (6-bit in int8, strict symmetric) a Clip (activations) or a
per-channel Max/Min (simulated weights) to the grid's dequantized bounds follows
the DequantizeLinear; stored integers are already on the grid. Containers
(``kernels.quant.container_bits``): int8/uint8 up to 8 bits, int16/uint16 up to 16 (opset 21),
int32 for biases.

quantsim's own Clip, Max and Min carry the node metadata entry ``aimetcli.role`` =
``narrow-grid`` (:func:`is_grid_node`), which onnx serialization keeps and onnxruntime
ignores: ``export`` removes those and never a clamp of the model itself (a ReLU6 written
as Clip(0, 6), a hard-swish's Clip) that happens to follow a quantized tensor.

A graph output keeps its name: its producer's value is renamed and the quantized
value takes the output's name, so users' output names do not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.graph_builder import insert_after_producer, values_by_name
from aimetcli.kernels.quant import Encoding, quantize

SIM_OPSET = 13
WIDE_OPSET = 21  # int16/uint16 QuantizeLinear


ROLE_KEY = g.ROLE_KEY
GRID_ROLE = "narrow-grid"


def mark_grid_node(node: ir.Node) -> ir.Node:
    """Mark a Clip/Max/Min that restricts a DequantizeLinear's output to a narrow grid as quantsim's."""
    node.metadata_props[ROLE_KEY] = GRID_ROLE
    return node


def is_grid_node(node: ir.Node) -> bool:
    return node.metadata_props.get(ROLE_KEY) == GRID_ROLE


def required_opset(encs: list[Encoding]) -> int:
    return WIDE_OPSET if any(8 < e.bitwidth <= 16 for e in encs) else SIM_OPSET


def _scale_zp(graph: ir.Graph, names: g.Names, base: str, enc: Encoding) -> tuple[ir.Value, ir.Value]:
    dtype = enc.container_dtype
    scale = g.add_initializer(graph, names.new(f"{base}_scale"), np.asarray(enc.scale, np.float32))
    zp = g.add_initializer(graph, names.new(f"{base}_zero_point"), np.asarray(enc.zero_point).astype(dtype))
    return scale, zp


def _axis_attrs(enc: Encoding) -> dict:
    return {"axis": ir.AttrInt64("axis", int(enc.axis))} if enc.per_channel else {}


@dataclass(frozen=True)
class ActivationConstants:
    """Names of the initializers that hold one activation quantizer's grid."""

    scale: str
    zero_point: str
    clip_min: str | None
    clip_max: str | None


def activation_chain(graph: ir.Graph, names: g.Names, value: ir.Value, enc: Encoding
                     ) -> tuple[list[ir.Node], ir.Value, tuple[str | None, str | None]]:
    """The nodes that quantize activation ``value`` on ``enc`` (QuantizeLinear, DequantizeLinear
    and, for a narrow grid, Clip), not inserted and with no reader rewired: (nodes, their final
    value, the Clip's bound names or Nones). :func:`insert_activation` inserts them; mixed
    precision's switchable sim (aimetcli/amp/switch.py) puts several side by side."""
    tensor = value.name
    scale, zp = _scale_zp(graph, names, tensor, enc)
    clip_names: tuple[str | None, str | None] = (None, None)
    q = ir.Node("", "QuantizeLinear", [value, scale, zp], name=names.new(f"{tensor}_QuantizeLinear"))
    q.outputs[0].name = names.new(f"{tensor}_quantized")
    dq = ir.Node("", "DequantizeLinear", [q.outputs[0], scale, zp], name=names.new(f"{tensor}_DequantizeLinear"))
    dq.outputs[0].name = names.new(f"{tensor}_dequantized")
    new_nodes = [q, dq]
    final = dq.outputs[0]
    if enc.needs_clip:
        lo, hi = enc.dequantized_bounds()
        lo_v = g.add_initializer(graph, names.new(f"{tensor}_clip_min"), np.asarray(lo, np.float32).reshape(()))
        hi_v = g.add_initializer(graph, names.new(f"{tensor}_clip_max"), np.asarray(hi, np.float32).reshape(()))
        clip_names = (lo_v.name, hi_v.name)
        clip = mark_grid_node(ir.Node("", "Clip", [final, lo_v, hi_v], name=names.new(f"{tensor}_Clip")))
        clip.outputs[0].name = names.new(f"{tensor}_clipped")
        new_nodes.append(clip)
        final = clip.outputs[0]
    final.type, final.shape = value.type, value.shape
    return new_nodes, final, clip_names


def insert_activation(graph: ir.Graph, names: g.Names, value: ir.Value, enc: Encoding,
                      record: dict[str, ActivationConstants] | None = None) -> ir.Value:
    tensor = value.name
    new_nodes, final, clip_names = activation_chain(graph, names, value, enc)
    q = new_nodes[0]
    if record is not None:
        scale, zp = q.inputs[1], q.inputs[2]
        assert scale is not None and zp is not None and scale.name and zp.name
        record[tensor] = ActivationConstants(scale.name, zp.name, *clip_names)
    # readers of the float tensor now read the quantized one
    reroute(graph, names, value, [use for use in value.uses() if use.node is not q], final, new_nodes)
    return final


def reroute(graph: ir.Graph, names: g.Names, value: ir.Value, readers: list, final: ir.Value,
            new_nodes: list[ir.Node]) -> None:
    """``readers`` (uses of ``value``) read ``final`` instead, and a graph output ``value`` becomes
    ``final`` under ``value``'s name (``value`` renamed ``<name>_float``); ``new_nodes`` go right
    after ``value``'s producer (first, for a graph input)."""
    tensor = value.name
    for use in readers:
        use.node.replace_input_with(use.idx, final)
    if value.is_graph_output():
        outputs = graph.outputs
        for i, out in enumerate(outputs):
            if out is value:
                outputs[i] = final
        value.name = names.new(f"{tensor}_float")
        final.name = tensor
    insert_after_producer(graph, value, new_nodes)  # a graph input is quantized first


def _bounds_shape(enc: Encoding, ndim: int) -> list[int]:
    shape = [1] * ndim
    if enc.per_channel:
        shape[enc.axis] = -1
    return shape


def weight_chain(graph: ir.Graph, names: g.Names, value: ir.Value, enc: Encoding, *,
                 store_integers: bool = False) -> tuple[list[ir.Node], ir.Value]:
    """The nodes that quantize weight ``value`` on ``enc``, not inserted and with no reader
    rewired: (nodes, their final value). ``store_integers`` replaces the weight by its integers
    (then only a DequantizeLinear follows), else a QuantizeLinear computes them, and a narrow
    per-channel grid gets Max/Min."""
    tensor = value.name
    w = value.const_value.numpy().astype(np.float32, copy=False)
    dtype = enc.container_dtype
    scale, zp = _scale_zp(graph, names, tensor, enc)
    nodes = []
    if store_integers:
        g.set_constant(value, quantize(w, enc, dtype))
        source = value
    else:
        q = ir.Node("", "QuantizeLinear", [value, scale, zp], attributes=_axis_attrs(enc),
                    name=names.new(f"{tensor}_QuantizeLinear"))
        q.outputs[0].name = names.new(f"{tensor}_quantized")
        nodes.append(q)
        source = q.outputs[0]
    dq = ir.Node("", "DequantizeLinear", [source, scale, zp], attributes=_axis_attrs(enc),
                 name=names.new(f"{tensor}_DequantizeLinear"))
    dq.outputs[0].name = names.new(f"{tensor}_dequantized")
    nodes.append(dq)
    final = dq.outputs[0]
    if not store_integers and enc.needs_clip:
        # QuantizeLinear saturates at the container; clip to the grid (per channel: Max/Min broadcast)
        lo, hi = enc.dequantized_bounds()
        shape = _bounds_shape(enc, w.ndim)
        lo_v = g.add_initializer(graph, names.new(f"{tensor}_grid_min"), np.asarray(lo, np.float32).reshape(shape))
        hi_v = g.add_initializer(graph, names.new(f"{tensor}_grid_max"), np.asarray(hi, np.float32).reshape(shape))
        mx = mark_grid_node(ir.Node("", "Max", [final, lo_v], name=names.new(f"{tensor}_GridMax")))
        mx.outputs[0].name = names.new(f"{tensor}_grid_lower")
        mn = mark_grid_node(ir.Node("", "Min", [mx.outputs[0], hi_v], name=names.new(f"{tensor}_GridMin")))
        mn.outputs[0].name = names.new(f"{tensor}_grid_clipped")
        nodes += [mx, mn]
        final = mn.outputs[0]
    final.type = ir.TensorType(ir.DataType.FLOAT)
    final.shape = ir.Shape(w.shape)
    return nodes, final


def insert_param(graph: ir.Graph, names: g.Names, value: ir.Value, enc: Encoding, *,
                 store_integers: bool, order: dict[ir.Node, int]) -> ir.Value:
    """Quantize a weight: ``store_integers`` keeps only its integers (deployment), else the
    float weight stays and a QuantizeLinear computes them (simulation: export gets the
    original weights back by removing the nodes)."""
    nodes, final = weight_chain(graph, names, value, enc, store_integers=store_integers)
    readers = [u for u in value.uses() if u.node not in nodes]
    for use in readers:
        use.node.replace_input_with(use.idx, final)
    if readers:  # before the first reader in node order (positions computed once per model)
        graph.insert_before(min((u.node for u in readers), key=lambda n: order.get(n, len(order))), nodes)
    else:
        graph.extend(nodes)
    return final


def insert_qdq(model: ir.Model, activations: dict[str, Encoding], params: dict[str, Encoding], *,
               store_integers: bool = False, record: dict[str, ActivationConstants] | None = None
               ) -> dict[str, str]:
    """Insert every quantizer, and put each bias a runtime stores as int32 on that grid
    (:mod:`aimetcli.quantsim.bias_grid`). Returns {graph output name: new name of its float value}.

    ``record``, when given, receives the names of each activation quantizer's constants.
    """
    from aimetcli.quantsim.bias_grid import insert_rounding, runtime_bias_grids

    graph = model.graph
    names = g.Names(model)
    values = values_by_name(graph)
    renamed = {}
    order = {node: i for i, node in enumerate(graph)}
    # biases a runtime stores on the accumulator's grid: rounded so here too (quantsim/bias_grid.py)
    derived = runtime_bias_grids(graph, activations, params)
    for tensor, enc in derived.items():
        if store_integers:
            insert_param(graph, names, graph.initializers[tensor], enc, store_integers=True, order=order)
        else:
            scale = g.add_initializer(graph, names.new(f"{tensor}_bias_scale"), np.asarray(enc.scale, np.float32))
            insert_rounding(graph, names, graph.initializers[tensor], scale)
    for tensor, enc in params.items():
        # QuantizeLinear has no int32 output: 32-bit (bias) grids are always stored as integers
        insert_param(graph, names, graph.initializers[tensor], enc,
                     store_integers=store_integers or enc.bitwidth > 16, order=order)
    for tensor, enc in activations.items():
        value = values[tensor]
        insert_activation(graph, names, value, enc, record)
        if value.name != tensor:
            renamed[tensor] = value.name
    return renamed
