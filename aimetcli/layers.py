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

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_KIND = {"Conv": "conv", "ConvTranspose": "convtranspose", "Gemm": "gemm", "MatMul": "matmul"}


@dataclass
class Layer:
    node: ir.Node
    kind: str  # conv | convtranspose | gemm | matmul

    @property
    def name(self) -> str:
        return g.node_label(self.node)

    @property
    def groups(self) -> int:
        return self.node.attributes.get_int("group", 1) if self.kind in ("conv", "convtranspose") else 1

    @property
    def trans_b(self) -> bool:
        return bool(self.node.attributes.get_int("transB", 0)) if self.kind == "gemm" else False

    @property
    def weight(self) -> ir.Value | None:
        return self.node.inputs[1] if len(self.node.inputs) > 1 else None

    @property
    def bias_index(self) -> int | None:
        return None if self.kind == "matmul" else 2

    @property
    def bias(self) -> ir.Value | None:
        if self.kind == "matmul" or len(self.node.inputs) < 3:
            return None
        return self.node.inputs[2]

    @property
    def output(self) -> ir.Value:
        return self.node.outputs[0]

    @property
    def pads_input(self) -> bool:
        """Whether the layer reads zero padding around its input: a Conv with non-zero ``pads``
        or a SAME ``auto_pad``. (ConvTranspose's ``pads`` crop its output instead.)"""
        if self.kind != "conv":
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
        if self.kind == "conv":
            return w.shape[0]
        if self.kind == "convtranspose":
            return w.shape[1] * self.groups
        if self.kind == "gemm":
            return w.shape[0] if self.trans_b else w.shape[1]
        return w.shape[1]

    def in_channels(self, w: np.ndarray) -> int:
        if self.kind == "conv":
            return w.shape[1] * self.groups
        if self.kind == "convtranspose":
            return w.shape[0]
        if self.kind == "gemm":
            return w.shape[1] if self.trans_b else w.shape[0]
        return w.shape[0]

    def out_axis(self) -> int:
        """Axis of the weight holding output channels (ConvTranspose: groups folded in)."""
        if self.kind in ("conv",):
            return 0
        if self.kind == "convtranspose":
            return 1
        if self.kind == "gemm":
            return 0 if self.trans_b else 1
        return 1

    # Weight maths, dispatched on kind
    def scale_out(self, w: np.ndarray, s: np.ndarray, inplace: bool = False) -> np.ndarray:
        return bn_math.scale_output_channels(w, s, kind=self.kind, groups=self.groups, trans_b=self.trans_b,
                                             inplace=inplace)

    def scale_in(self, w: np.ndarray, s: np.ndarray, inplace: bool = False) -> np.ndarray:
        return bn_math.scale_input_channels(w, s, kind=self.kind, groups=self.groups, trans_b=self.trans_b,
                                            inplace=inplace)

    def apply_to_constant(self, w: np.ndarray, vec: np.ndarray) -> np.ndarray:
        return bn_math.input_channel_sums(w, vec, kind=self.kind, groups=self.groups, trans_b=self.trans_b)

    def per_out_channel_abs_max(self, w: np.ndarray) -> np.ndarray:
        """max |w| per output channel (the per-channel weight range used by CLE)."""
        w = np.asarray(w)
        if self.kind == "convtranspose":
            cin, cout_g = w.shape[0], w.shape[1]
            wg = w.reshape(self.groups, cin // self.groups, cout_g, -1)
            return _abs_max(wg, (1, 3)).reshape(-1)
        return _abs_max(w, tuple(i for i in range(w.ndim) if i != self.out_axis()))

    def per_in_channel_abs_max(self, w: np.ndarray) -> np.ndarray:
        """max |w| per input channel of the layer (over all outputs that read it)."""
        w = np.asarray(w)
        if self.kind == "conv":
            cout, cin_g = w.shape[0], w.shape[1]
            wg = w.reshape(self.groups, cout // self.groups, cin_g, -1)
            return _abs_max(wg, (1, 3)).reshape(-1)
        axis = 0 if self.kind == "convtranspose" else (1 if (self.kind == "gemm" and self.trans_b) else 0)
        return _abs_max(w, tuple(i for i in range(w.ndim) if i != axis))


def _abs_max(w: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """max |w| over ``axes`` as float64, without an |w| copy of the whole tensor."""
    return np.maximum(w.max(axis=axes), -w.min(axis=axes)).astype(np.float64)


def as_layer(node: ir.Node | None) -> Layer | None:
    if node is None or node.domain not in g.ONNX_DOMAINS or node.op_type not in _KIND:
        return None
    return Layer(node, _KIND[node.op_type])


def weight_reason(layer: Layer) -> str | None:
    """Why the layer's weights cannot be rewritten, or None when they can."""
    w = layer.weight
    if w is None:
        return f"{layer.name} has no weight input"
    arr = g.constant(w)
    if arr is None:
        if w.is_graph_input():
            return f"weight {w.name} of {layer.name} is a graph input, not a constant"
        return f"weight {w.name} of {layer.name} is computed at run time, not a constant"
    if not g.is_float_dtype(arr):
        return f"weight {w.name} of {layer.name} is {arr.dtype}, not floating point"
    finite = np.isfinite(arr) if arr.dtype.kind == "f" else np.isfinite(arr.astype(np.float32))
    if not finite.all():
        return f"weight {w.name} of {layer.name} contains NaN or Inf"
    if layer.kind == "matmul" and arr.ndim != 2:
        return f"MatMul {layer.name} has a {arr.ndim}-D weight (only 2-D weights are handled)"
    if layer.kind == "gemm" and layer.node.attributes.get_int("transA", 0):
        return f"Gemm {layer.name} has transA=1"
    if layer.kind in ("conv", "convtranspose") and arr.ndim < 3:
        return f"{layer.name} has a {arr.ndim}-D weight"
    bias = layer.bias
    if bias is not None and g.constant(bias) is None:
        return f"bias {bias.name} of {layer.name} is not a constant"
    return None


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
            c = g.private_constant(graph, names, layer.node, 2)
            arr = c.const_value.numpy()
            g.set_constant(c, (arr.astype(np.float64) * beta).astype(arr.dtype))
        layer.node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)


def rewrite_reason(layer: Layer) -> str | None:
    """Why the layer's weight or bias cannot be rewritten, or None when both can."""
    return weight_reason(layer) or bias_reason(layer, layer.weight_array())


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


def bias_reason(layer: Layer, w: np.ndarray) -> str | None:
    """Why a new bias cannot be written for this layer (Gemm C of another shape)."""
    b = g.constant(layer.bias)
    if b is None:
        return None
    n = layer.out_channels(w)
    if b.size not in (1, n) or (b.ndim == 2 and b.shape[0] != 1) or b.ndim > 2:
        return f"bias {layer.bias.name} of {layer.name} has shape {list(b.shape)}, not per output channel"
    return None


def write_bias(layer: Layer, graph: ir.Graph, names: g.Names, new_bias: np.ndarray, dtype) -> None:
    """Set the layer's bias to ``new_bias`` [out_channels], creating it when absent.

    MatMul has no bias input: it becomes Gemm (its 2-D input is checked by callers),
    as AIMET does.
    """
    arr = np.asarray(new_bias, np.float64).astype(dtype)
    if layer.kind == "matmul":
        to_gemm(layer, graph)
    if layer.bias is not None:
        value = g.private_constant(graph, names, layer.node, 2)
        g.set_constant(value, arr)
        return
    wname = layer.weight.name or layer.name
    value = g.add_initializer(graph, names.new(f"{wname}_bias"), arr)
    if layer.kind == "gemm":
        layer.node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    layer.node.resize_inputs(3)
    layer.node.replace_input_with(2, value)


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
    layer.kind = "gemm"
