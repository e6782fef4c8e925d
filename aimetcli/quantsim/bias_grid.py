"""The grid a runtime stores a layer's bias on: int32, scale = input scale x weight scale.

A deployed quantized Conv, ConvTranspose or Gemm adds its bias in the integer accumulator, so
the runtime stores the bias as int32 on the accumulator's grid: for input scale ``s_x`` and
weight scale ``s_w`` (per output channel for per-channel weights)

    s_b = float32(s_x * s_w),   b' = s_b * round_half_even(b / s_b)   (float32 arithmetic)

onnxruntime does it in its WeightBiasQuantization pass (every optimization level above none)
whenever the layer reads a DequantizeLinear with a per-tensor scale, its weight is dequantized
per tensor or per channel on the output axis (0; Gemm: 0 when transB, else 1) with as many
scales as the bias has values, and its output reaches a QuantizeLinear through nothing but
single-reader Relu/Clip; QNN and SNPE compute the same grid. quantsim and export put such a
bias on that grid themselves, so the sim computes what the deployed model computes: the sim
keeps the float bias and rounds it in the graph (``Div -> Round -> Clip -> Mul`` by ``s_b``,
the Clip to int32's range, where the stored integers saturate; marked
with the node metadata ``aimetcli.role`` = ``runtime-bias-grid``, which export removes to get
the FP32 bias back); the deployable model stores its int32 integers behind a DequantizeLinear,
as quantize_static writes biases, and onnxruntime's pass finds nothing left to do. Both give
``float32(q) * s_b`` bit for bit. The grid is derived from the two encodings, not chosen: it
is not written to the encodings files (a runtime derives it again).

The rounding moves each output channel by at most ``s_b / 2``, a small fraction of a step of
the layer's output grid, but a search that picks among configurations by their measured score
picks for the rounding it measured (docs/design.md, "The sim stores biases as the runtime
does"). Bias correction's run rounds its corrections to the same grid (correction_graph.py).

A bias the quantsim config quantizes itself (``params: bias: is_quantized``, AIMET's own grid
from the bias's range) keeps that grid: its DequantizeLinear already feeds the layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.kernels.quant import Encoding

BIAS_BITS = 32
LAYERS = ("Conv", "ConvTranspose", "Gemm")
ROLE = "runtime-bias-grid"  # the value of graph.ROLE_KEY on the sim's rounding nodes


def _output_axis(node: ir.Node) -> int:
    """The weight axis of the layer's output channels, where onnxruntime looks for per-channel scales."""
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    return 0


def _output_chain(value: ir.Value) -> tuple[str, ...]:
    """``value`` and, while a tensor's only reader is a Relu or Clip, that reader's output: the
    tensors whose quantizer the layer's output reaches without branching."""
    chain = [value.name or ""]
    while len(chain) < 64:
        readers = {use.node for use in value.uses()}
        if len(readers) != 1:
            break
        (reader,) = readers
        if reader.op_type not in ("Relu", "Clip") or reader.domain not in ("", "ai.onnx"):
            break
        value = reader.outputs[0]
        chain.append(value.name or "")
    return tuple(chain)


@dataclass(frozen=True)
class BiasSite:
    """A layer whose bias a runtime may store as int32: the names of its bias, input and weight,
    the weight axis its per-channel scales must lie on, the tensors its output reaches without
    branching (:func:`_output_chain`) and its number of values."""

    bias: str
    input: str
    weight: str
    axis: int
    chain: tuple[str, ...]
    channels: int

    def grid(self, activations: dict[str, Encoding], params: dict[str, Encoding]) -> Encoding | None:
        """The bias's grid under these encodings, or None where the runtime leaves it float."""
        return self.grid_of(activations.get(self.input), params.get(self.weight),
                            any(t in activations for t in self.chain))

    def grid_of(self, x: Encoding | None, w: Encoding | None, reached: bool) -> Encoding | None:
        """The bias's grid for input grid ``x`` and weight grid ``w`` (None: float), ``reached``
        when the output reaches a quantizer; None where the runtime leaves the bias float."""
        if x is None or w is None or not reached or x.needs_clip:  # a narrow grid's Clip hides its DequantizeLinear
            return None
        if w.per_channel and w.axis != self.axis:
            return None
        return bias_grid(x, w, self.channels)


def bias_sites(graph: ir.Graph) -> list[BiasSite]:
    """Every Conv/ConvTranspose/Gemm of ``graph`` (before quantizers are inserted) with a 1-D float
    bias initializer read by it alone."""
    out = []
    for node in graph:
        if node.op_type not in LAYERS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 3:
            continue
        x, w, b = node.inputs[0], node.inputs[1], node.inputs[2]
        if x is None or w is None or b is None or not b.is_initializer() or len(b.uses()) != 1:
            continue
        bias = g.constant(b)
        if bias is None or bias.ndim != 1 or not g.is_float_dtype(bias):
            continue
        out.append(BiasSite(b.name or "", x.name or "", w.name or "", _output_axis(node),
                            _output_chain(node.outputs[0]), int(bias.shape[0])))
    return out


def bias_grid(x: Encoding, w: Encoding, channels: int) -> Encoding | None:
    """The int32 grid of a bias of ``channels`` values for input grid ``x`` and weight grid ``w``
    (module docstring), or None where a runtime leaves the bias float (a per-channel input grid,
    per-channel weight scales of another count)."""
    if x.per_channel or (w.per_channel and w.num_channels != channels):
        return None
    scale = np.float32(x.scale) * w.scale.astype(np.float32)  # float32, as the runtime multiplies
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        return None
    offset = np.full(scale.shape, -(2 ** (BIAS_BITS - 1)), np.int64)
    return Encoding(BIAS_BITS, True, scale, offset, axis=0 if scale.ndim else None)


def runtime_bias_grids(graph: ir.Graph, activations: dict[str, Encoding], params: dict[str, Encoding]
                       ) -> dict[str, Encoding]:
    """{bias initializer: its int32 grid} for every layer of ``graph`` (before quantizers are
    inserted) whose bias a runtime stores as int32 under ``activations`` and ``params``
    (module docstring). A bias with a grid of its own in ``params`` is left out."""
    out: dict[str, Encoding] = {}
    for site in bias_sites(graph):
        if site.bias in params:
            continue
        grid = site.grid(activations, params)
        if grid is not None:
            out[site.bias] = grid
    return out


def insert_rounding(graph: ir.Graph, names: g.Names, value: ir.Value, scale: ir.Value) -> ir.Value:
    """The sim's form (module docstring): the readers of bias ``value`` read
    ``Mul(Clip(Round(Div(value, scale)), -2^31, 2^31 - 1), scale)``, its nodes marked and placed
    before the first reader. Returns the rounded bias."""
    tensor = value.name or ""
    readers = list(value.uses())
    nodes = []
    x = value
    lo, hi = (g.add_initializer(graph, names.new(f"{tensor}_bias_{end}"), np.asarray(v, np.float32))
              for end, v in (("qmin", -(2.0 ** 31)), ("qmax", 2.0 ** 31 - 1)))
    for op, operands in (("Div", [scale]), ("Round", []), ("Clip", [lo, hi]), ("Mul", [scale])):
        node = ir.Node("", op, [x, *operands], name=names.new(f"{tensor}_bias_grid_{op}"))
        node.metadata_props[g.ROLE_KEY] = ROLE
        node.outputs[0].name = names.new(f"{tensor}_bias_grid_{op.lower()}")
        x = node.outputs[0]
        x.type, x.shape = ir.TensorType(ir.DataType.FLOAT), value.shape
        nodes.append(node)
    for use in readers:
        use.node.replace_input_with(use.idx, x)
    graph.insert_before(readers[0].node, nodes)
    return x


def strip_rounding(graph: ir.Graph) -> int:
    """Remove the sim's rounding chains (:func:`insert_rounding`): each layer reads its float bias
    again. Returns the nodes removed."""
    removed = 0
    for node in list(graph):
        if node.op_type != "Div" or node.metadata_props.get(g.ROLE_KEY) != ROLE or node.graph is None:
            continue
        chain = [node]
        while len(chain) < 4:
            readers = [u.node for u in chain[-1].outputs[0].uses()]
            if len(readers) != 1 or readers[0].metadata_props.get(g.ROLE_KEY) != ROLE:
                break
            chain.append(readers[0])
        if len(chain) != 4:
            continue
        bias = node.inputs[0]
        assert bias is not None
        chain[-1].outputs[0].replace_all_uses_with(bias)
        constants = [v for n in chain for v in n.inputs[1:] if v is not None]
        for n in reversed(chain):
            graph.remove(n, safe=True)
        g.remove_unused_initializers(graph, constants)
        removed += len(chain)
    return removed
