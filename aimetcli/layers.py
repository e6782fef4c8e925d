"""A uniform view of the weighted layers every technique works on.

Conv, ConvTranspose, Gemm and MatMul differ only in where their output and input
channels sit in the weight and where the bias goes; :class:`Layer` hides that, so
the passes are written once (the onnxscript rewriter's "variants by small
overrides").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.kernels import bn as bn_math
from aimetcli.kernels.layout import LayerSpec, channel_abs_max, layer_spec
from aimetcli.verdict import OK, Verdict, skip

__all__ = ["Layer", "as_layer", "bias_array", "check_bias", "check_rewrite", "check_weight", "weight_reason",
           "write_bias"]


@dataclass
class Layer:
    """A Conv, ConvTranspose, Gemm or MatMul node and its row of the layout table."""

    node: ir.Node
    spec: LayerSpec

    @property
    def name(self) -> str:
        return g.node_label(self.node)

    @property
    def op_type(self) -> str:
        return self.spec.op_type

    @property
    def groups(self) -> int:
        return self.node.attributes.get_int("group", 1) if self.spec.group_axis is not None else 1

    @property
    def weight(self) -> ir.Value | None:
        return self.node.inputs[1] if len(self.node.inputs) > 1 else None

    @property
    def bias(self) -> ir.Value | None:
        slot = self.spec.bias_slot
        if slot is None or len(self.node.inputs) <= slot:
            return None
        return self.node.inputs[slot]

    @property
    def output(self) -> ir.Value:
        return self.node.outputs[0]

    def matrix_dims(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(groups, d) of the weight of this ``shape`` as a [g, m, d] matrix (AdaRound's, SeqMSE's)."""
        if self.spec.group_axis is None:
            return 1, int(shape[self.spec.in_axis])
        return self.groups, self.spec.in_channels(shape, self.groups) // self.groups * int(np.prod(shape[2:]))

    def positions_per_sample(self) -> int | None:
        """Output positions a sample of an ungrouped Gemm, MatMul or Conv has, from the declared
        shapes (None where they do not tell, or for ConvTranspose)."""
        if self.op_type == "ConvTranspose" or self.groups != 1:
            return None
        if self.op_type == "Gemm":  # its input is a matrix: a row per sample
            return 1
        value = self.node.inputs[0] if self.spec.group_axis is None else self.node.outputs[0]
        dims = value.shape.dims if value is not None and value.shape is not None else None
        if not dims or len(dims) < 2:
            return None
        inner = dims[1:-1] if self.spec.group_axis is None else dims[2:]
        if not all(isinstance(d, int) for d in inner):
            return None
        return int(np.prod(inner, dtype=np.int64)) if inner else 1

    @property
    def pads_input(self) -> bool:
        """Whether the layer reads zero padding around its input: a Conv with non-zero ``pads``
        or a SAME ``auto_pad``. (ConvTranspose's ``pads`` crop its output instead.)"""
        if self.op_type != "Conv":
            return False
        pads = self.node.attributes.get_ints("pads", None)
        return bool(pads and any(pads)) or self.node.attributes.get_string("auto_pad", "NOTSET") not in (
            "NOTSET", "VALID")

    @property
    def input_known_2d(self) -> bool:
        """Whether the layer's data input is known to be 2-D (MatMul: channels on axis 1 then)."""
        shape = self.node.inputs[0].shape
        return shape is not None and len(shape) == 2

    def weight_array(self) -> np.ndarray | None:
        return g.constant(self.weight)

    def out_channels(self, w: np.ndarray) -> int:
        return self.spec.out_channels(w.shape, self.groups)

    def in_channels(self, w: np.ndarray) -> int:
        return self.spec.in_channels(w.shape, self.groups)

    # Weight maths, on the spec's axes
    def scale_out(self, w: np.ndarray, s: np.ndarray, inplace: bool = False) -> np.ndarray:
        return bn_math.scale_output_channels(w, s, spec=self.spec, groups=self.groups, inplace=inplace)

    def scale_in(self, w: np.ndarray, s: np.ndarray, inplace: bool = False) -> np.ndarray:
        return bn_math.scale_input_channels(w, s, spec=self.spec, groups=self.groups, inplace=inplace)

    def apply_to_constant(self, w: np.ndarray, vec: np.ndarray) -> np.ndarray:
        return bn_math.input_channel_sums(w, vec, spec=self.spec, groups=self.groups)

    def per_out_channel_abs_max(self, w: np.ndarray) -> np.ndarray:
        """max |w| per output channel (the per-channel weight range used by CLE)."""
        return channel_abs_max(w, self.spec, self.groups, self.spec.out_axis)

    def per_in_channel_abs_max(self, w: np.ndarray) -> np.ndarray:
        """max |w| per input channel of the layer (over all outputs that read it)."""
        return channel_abs_max(w, self.spec, self.groups, self.spec.in_axis)


def as_layer(node: ir.Node | None) -> Layer | None:
    if node is None or node.domain not in g.ONNX_DOMAINS:
        return None
    spec = layer_spec(node.op_type, node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0)))
    return None if spec is None else Layer(node, spec)


def check_weight(layer: Layer) -> Verdict:
    """ok when the layer's weights can be rewritten, else why not."""
    w = layer.weight
    if w is None:
        return skip(f"{layer.name} has no weight input")
    arr = g.constant(w)
    if arr is None:
        if w.is_graph_input():
            return skip(f"weight {w.name} of {layer.name} is a graph input, not a constant")
        return skip(f"weight {w.name} of {layer.name} is computed at run time, not a constant")
    if not g.is_float_dtype(arr):
        return skip(f"weight {w.name} of {layer.name} is {arr.dtype}, not floating point")
    finite = np.isfinite(arr) if arr.dtype.kind == "f" else np.isfinite(arr.astype(np.float32))
    if not finite.all():
        return skip(f"weight {w.name} of {layer.name} contains NaN or Inf")
    if layer.op_type == "MatMul" and arr.ndim != 2:
        return skip(f"MatMul {layer.name} has a {arr.ndim}-D weight (only 2-D weights are handled)")
    if layer.op_type == "Gemm" and layer.node.attributes.get_int("transA", 0):
        return skip(f"Gemm {layer.name} has transA=1")
    if layer.spec.group_axis is not None and arr.ndim < 3:
        return skip(f"{layer.name} has a {arr.ndim}-D weight")
    bias = layer.bias
    if bias is not None and g.constant(bias) is None:
        return skip(f"bias {bias.name} of {layer.name} is not a constant")
    return OK


def weight_reason(layer: Layer) -> str | None:
    """:func:`check_weight`'s reason (None: ok), for adaround.py, which reads it so until it
    moves to the verdict."""
    return check_weight(layer).reason


def normalize_gemm(layer: Layer, graph: ir.Graph, names: g.Names) -> None:
    """Fold Gemm's alpha and beta into B and C, so Y = A B' + C afterwards."""
    alpha = layer.node.attributes.get_float("alpha", 1.0)
    beta = layer.node.attributes.get_float("beta", 1.0)
    if alpha != 1.0:
        w = g.private_constant(graph, names, layer.node, 1)
        arr = w.const_value.numpy()
        g.set_constant(w, (arr.astype(np.float64) * alpha).astype(arr.dtype))
        layer.node.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
    if beta != 1.0:
        if layer.bias is not None:
            c = g.private_constant(graph, names, layer.node, layer.spec.bias_slot)
            arr = c.const_value.numpy()
            g.set_constant(c, (arr.astype(np.float64) * beta).astype(arr.dtype))
        layer.node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)


def check_rewrite(layer: Layer) -> Verdict:
    """ok when the layer's weight and bias can both be rewritten, else why not."""
    weight = check_weight(layer)
    return check_bias(layer, layer.weight_array()) if weight else weight


def bias_array(layer: Layer, w: np.ndarray) -> np.ndarray:
    """The bias as a float64 vector of out_channels (zeros when absent)."""
    n = layer.out_channels(w)
    b = g.constant(layer.bias)
    if b is None:
        return np.zeros(n, np.float64)
    b = np.asarray(b, np.float64)
    if b.size == 1:
        return np.full(n, float(b.reshape(-1)[0]))
    return b.reshape(-1)


def check_bias(layer: Layer, w: np.ndarray) -> Verdict:
    """ok when a new bias can be written for this layer, else why not (Gemm C of another shape)."""
    b = g.constant(layer.bias)
    if b is None:
        return OK
    n = layer.out_channels(w)
    if b.size not in (1, n) or (b.ndim == 2 and b.shape[0] != 1) or b.ndim > 2:
        return skip(f"bias {layer.bias.name} of {layer.name} has shape {list(b.shape)}, not per output channel")
    return OK


def write_bias(layer: Layer, graph: ir.Graph, names: g.Names, new_bias: np.ndarray, dtype) -> None:
    """Set the layer's bias to ``new_bias`` [out_channels], creating it when absent.

    MatMul has no bias input: it becomes Gemm (its 2-D input is checked by callers),
    as AIMET does.
    """
    arr = np.asarray(new_bias, np.float64).astype(dtype)
    if layer.spec.bias_slot is None:
        to_gemm(layer, graph)
    slot = layer.spec.bias_slot
    if layer.bias is not None:
        value = g.private_constant(graph, names, layer.node, slot)
        g.set_constant(value, arr)
        return
    wname = layer.weight.name or layer.name
    value = g.add_initializer(graph, names.new(f"{wname}_bias"), arr)
    if layer.op_type == "Gemm":
        layer.node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    layer.node.resize_inputs(slot + 1)
    layer.node.replace_input_with(slot, value)


def to_gemm(layer: Layer, graph: ir.Graph) -> None:
    """Turn a MatMul with a 2-D input and constant 2-D weight into an equivalent Gemm."""
    old = layer.node
    new = ir.Node("", "Gemm", inputs=[old.inputs[0], old.inputs[1]], name=old.name or None)
    graph.insert_before(old, new)
    out = old.outputs[0]
    name = out.name
    out.replace_all_uses_with(new.outputs[0], replace_graph_outputs=True)
    graph.remove(old, safe=True)
    new.outputs[0].name = name
    new.outputs[0].shape = out.shape
    new.outputs[0].type = out.type
    layer.node = new
    layer.spec = layer_spec("Gemm")
