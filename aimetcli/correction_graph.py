"""The one graph empirical bias correction runs (bias_correction.py explains why).

Up to two copies of the model read the same graph inputs:

* the *sim*: the quantsim model (weights fake-quantized, activations through QDQ);
* the *float path* (only with in-graph grids): the model with its weights
  fake-quantized and float activations, which is what quantsim calibrates on.

The FP32 model's per-channel layer-output means come in as graph inputs (computed
beforehand in a pass of their own: they do not depend on any correction). For every
target layer, the sim's per-channel mean of its output (GlobalAveragePool, then the
mean over the rows of axis 0, samples or not) is subtracted from the FP32 one; the difference ``d`` is a
graph output and, for a layer to correct, is added to the layer's output in the sim
and in the float path before anything downstream reads it. Every layer is so
measured with every earlier layer quantized and already corrected, in one
onnxruntime run.

In-graph grids (min-max only): an activation quantizer of the sim may take its
grid from the float path's range of the same tensor in the same run, after every
upstream correction. The grid is AIMET's (kernels/quant.py: encoding_from_range),
computed in double precision:

    lo = min(min x, 0)    hi = max(max x, 0, lo + max(min_range, steps * minimum_scale))
    asymmetric: scale = (hi - lo) / steps, offset = clip(round_half_away(lo / scale), -steps, 0),
                zero_point = -offset
    symmetric:  scale = max(hi / pos, -lo / neg), zero_point = 0  ((pos, neg) = symmetric_step_counts(steps))
    Clip bounds (narrow grids): (qmin - zero_point) * float32(scale), (qmax - zero_point) * float32(scale)

so the sim quantizes each tensor exactly as quantsim will on the corrected model.
The sim's constants for such a quantizer are replaced by the computed values,
under the same names.

Biases a runtime stores as int32 on the grid ``s = s_x * s_w`` (quantsim/bias_grid.py)
are rounded in the sim as quantsim rounds them, ``s`` read from the input quantizer's
scale (computed in the run with in-graph grids). A corrected layer's bias can only
take values on that grid, so its correction is ``b' = s round((b_r + d) / s)`` (``b_r``
the rounded bias the sim had), the sim's output moves by ``b' - b_r``, and every later
layer is measured with what that rounding leaves: the shift left at a layer is at most
half a step of its own grid, not the sum of the rounding of every layer before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.graph_builder import Builder, add_outputs, forget_value_info, merge, taken_names, values_by_name
from aimetcli.kernels.quant import AIMET_MIN_RANGE, minimum_scale, symmetric_step_counts
from aimetcli.quantsim.insert import ActivationConstants

_DOUBLE, _FLOAT = int(ir.DataType.DOUBLE), int(ir.DataType.FLOAT)


@dataclass(frozen=True)
class Target:
    """A layer to measure: its output's name in the model and in the sim (float side), its shape."""

    reference: str
    sim: str
    rank: int
    channels: int
    correct: bool
    # the sim's names of the layer's float bias, its runtime grid's scale and the bias rounded
    # to it (quantsim/bias_grid.py), when a runtime stores the bias as int32
    bias_grid: tuple[str, str, str] | None = None

    @property
    def mean_shape(self) -> list[int]:
        return [1, self.channels] + [1] * (self.rank - 2)


@dataclass(frozen=True)
class Grid:
    """An activation quantizer whose grid comes from the float path's range in the graph."""

    tensor: str  # the float tensor, by its name in the float path
    constants: ActivationConstants  # the sim's initializers it replaces
    steps: int
    symmetric: bool
    non_negative: bool  # a Relu/Clip(0, ...) output: min is 0 and needs no ReduceMin
    rank: int | None  # of the tensor, when known (4-D: its max is pooled on the blocked layout first)
    zero_point_type: int  # onnx element type of the zero point
    qmin: int
    qmax: int


class _Builder(Builder):
    """Nodes of the joint graph, held until :meth:`Builder.place_after` puts them after the node
    whose output they read."""

    def __init__(self, joint: ir.Model, taken: set[str], replaced: dict[str, ir.Value] | None = None):
        super().__init__(joint.graph, taken, hold=True)
        self.opset = g.opset_version(joint)
        self.replaced = replaced or {}  # the sim's initializers a grid computes, by name
        self._consts: dict[tuple, ir.Value] = {}

    def name(self, base: str) -> str:
        return self.unique(base)

    def op(self, op: str, inputs: list[ir.Value], out: str | None = None, **attrs) -> ir.Value:
        return self.node(op, inputs, out or self.name(f"aimetcli_bc/{op}"), **attrs)

    def computed(self, op: str, inputs: list[ir.Value], name: str, **attrs) -> ir.Value:
        """A node computing the sim's initializer ``name``: its readers read the node's output."""
        out = self.node(op, inputs, ir.Value(name=name), **attrs)
        if name in self.replaced:
            self.redirect(self.replaced[name], out)
        return out

    def const(self, value, dtype) -> ir.Value:
        key = (float(value) if np.ndim(value) == 0 else tuple(np.ravel(value)), np.dtype(dtype).str)
        if key not in self._consts:
            self._consts[key] = self.initializer(np.asarray(value, dtype=dtype), self.name("aimetcli_bc/const"))
        return self._consts[key]

    def reduce_mean(self, x: ir.Value, rank: int) -> ir.Value:
        if rank >= 3:
            # the spatial mean first: GlobalAveragePool runs on onnxruntime's blocked (NCHWc)
            # layout, so the tensor needs no copy back to NCHW; then the mean over the batch
            x, rank = self.op("GlobalAveragePool", [x]), 2
        axes = [i for i in range(rank) if i != 1]
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(np.array(axes, np.int64), np.int64)], keepdims=1)
        return self.op("ReduceMean", [x], axes=axes, keepdims=1)

    def rounded_correction(self, t: Target, shift: ir.Value, values: dict[str, ir.Value], out: str
                           ) -> tuple[ir.Value, ir.Value]:
        """A layer whose bias a runtime rounds to the grid ``s`` (``t.bias_grid``: float bias
        ``b``, ``s``, and ``b_r = s round(b / s)``, what the sim adds now): the corrected bias
        is ``b' = s round((b_r + shift) / s)``, on the grid, so quantsim keeps it as it is.
        Returns (``b' - b`` in the mean's shape, named ``out``: what bias correction adds to the
        float bias; ``b' - b_r`` in that shape: what the sim's output moves by)."""
        assert t.bias_grid is not None
        bias, scale, rounded = (values[n] for n in t.bias_grid)
        shape = self.const(np.array(t.mean_shape, np.int64), np.int64)
        flat = self.op("Reshape", [shift, self.const(np.array([-1], np.int64), np.int64)])
        target = self.op("Div", [self.op("Add", [rounded, flat]), scale])
        whole = self.op("Clip", [self.op("Round", [target]), self.const(-(2.0 ** 31), np.float32),
                                 self.const(2.0 ** 31 - 1, np.float32)])  # int32 saturates
        new = self.op("Mul", [whole, scale])
        written = self.op("Reshape", [self.op("Sub", [new, bias]), shape], out)
        applied = self.op("Reshape", [self.op("Sub", [new, rounded]), shape])
        return written, applied

    def grid(self, x: ir.Value, grid: Grid) -> None:
        """Nodes computing ``grid``'s scale, zero point and Clip bounds from tensor ``x``."""
        zero = self.const(0.0, np.float64)
        pooled = self.op("GlobalMaxPool", [x]) if grid.rank == 4 else x
        hi = self.op("Cast", [self.op("ReduceMax", [pooled], keepdims=0)], to=_DOUBLE)
        hi = self.op("Max", [hi, zero])
        if grid.non_negative:
            lo = zero
        else:
            lo = self.op("Min", [self.op("Cast", [self.op("ReduceMin", [x], keepdims=0)], to=_DOUBLE), zero])
        floor = max(AIMET_MIN_RANGE, grid.steps * minimum_scale(grid.steps))
        hi = self.op("Max", [hi, self.op("Add", [lo, self.const(floor, np.float64)])])
        c = grid.constants
        if grid.symmetric:
            pos, neg = symmetric_step_counts(grid.steps)
            scale = self.op("Max", [self.op("Div", [hi, self.const(float(pos), np.float64)]),
                                      self.op("Div", [self.op("Neg", [lo]), self.const(float(neg), np.float64)])])
            zp = zero
        else:
            scale = self.op("Div", [self.op("Sub", [hi, lo]), self.const(float(grid.steps), np.float64)])
            # round half away from zero of lo / scale <= 0: -floor(0.5 - lo / scale)
            neg = self.op("Sub", [self.const(0.5, np.float64), self.op("Div", [lo, scale])])
            zp = self.op("Clip", [self.op("Floor", [neg]), zero, self.const(float(grid.steps), np.float64)])
            self.computed("Cast", [zp], c.zero_point, to=int(grid.zero_point_type))
        scale32 = self.computed("Cast", [scale], c.scale, to=_FLOAT)
        if c.clip_min is not None and c.clip_max is not None:
            for bound, out in ((grid.qmin, c.clip_min), (grid.qmax, c.clip_max)):
                steps_from_zero = self.op("Cast", [self.op("Sub", [self.const(float(bound), np.float64), zp])],
                                          to=_FLOAT)
                self.computed("Mul", [steps_from_zero, scale32], out)


def build(sim: ir.Model, float_path: ir.Model | None, targets: list[Target],
          grids: list[Grid]) -> tuple[ir.Model, dict[str, str], dict[str, str], dict[str, str]]:
    """The joint model, {layer output: name of its ``d`` output}, {layer output: name of the
    graph input that takes its FP32 per-channel mean (shape ``Target.mean_shape``)} and, for the
    targets with a ``bias_grid``, {layer output: name of the output giving that grid's scale}
    (the corrected bias is snapped to it: ``d`` comes out of float arithmetic).

    ``sim`` and ``float_path`` are copies made for this (``calibrate.calibration_weights``, ``observed_model``): the
    joint model is ``sim`` extended, with the float path's nodes moved into it."""
    graph = sim.graph
    taken = taken_names(graph) | (taken_names(float_path.graph) if float_path is not None else set())
    inputs = {i.name for i in graph.inputs}
    dropped = {n for gr in grids for n in (gr.constants.scale, gr.constants.zero_point, gr.constants.clip_min,
                                         gr.constants.clip_max) if n is not None}
    dropped -= {gr.constants.zero_point for gr in grids if gr.symmetric}  # symmetric: zero point stays 0
    replaced = {name: graph.initializers.pop(name) for name in sorted(dropped) if name in graph.initializers}
    graph.outputs.clear()
    forget_value_info(graph)
    sim_values = values_by_name(graph)
    sim_nodes = list(graph)
    b = _Builder(sim, taken, replaced)

    float_values: dict[str, ir.Value] = {}
    float_nodes: list[ir.Node] = []
    if float_path is not None:
        # share what the float path holds with the same data as the sim (its constants but the quantized weights)
        prefix = "aimetcli_bc_f/"
        while any(name.startswith(prefix) for name in taken):
            prefix = "_" + prefix
        forget_value_info(float_path.graph)
        float_nodes = list(float_path.graph)
        float_values = merge(graph, float_path.graph, prefix)

    outputs: dict[str, str] = {}
    mean_inputs: dict[str, str] = {}
    after: dict[int, list[Callable[[], None]]] = {}  # id() of a sim/float value -> nodes to emit once it exists
    corrected_float: dict[int, ir.Value] = {}  # id() of a float value -> its corrected value
    d_values: dict[str, ir.Value] = {}
    scales: dict[str, ir.Value] = {}  # layer output -> the scale of its bias's runtime grid
    for t in targets:
        fp_mean = ir.Value(name=b.name("aimetcli_bc/fp32_mean"), type=ir.TensorType(ir.DataType.FLOAT),
                           shape=ir.Shape(t.mean_shape))
        graph.inputs.append(fp_mean)
        mean_inputs[t.reference] = fp_mean.name
        d = b.name("aimetcli_bc/d")
        src = sim_values[t.sim]
        fixed = b.name("aimetcli_bc/corrected") if t.correct else None
        outputs[t.reference] = d

        def emit(t=t, src=src, d=d, fp_mean=fp_mean, fixed=fixed):
            if fixed and t.bias_grid is not None:
                shift = b.op("Sub", [fp_mean, b.reduce_mean(src, t.rank)])
                d_values[d], applied = b.rounded_correction(t, shift, sim_values, d)
                b.redirect(src, b.op("Add", [src, applied], fixed))
                scales[t.reference] = sim_values[t.bias_grid[1]]
                return
            d_values[d] = b.op("Sub", [fp_mean, b.reduce_mean(src, t.rank)], d)
            if fixed:
                b.redirect(src, b.op("Add", [src, d_values[d]], fixed))

        after.setdefault(id(src), []).append(emit)
        if fixed and float_path is not None:
            fsrc = float_values[t.reference]
            ffixed = b.name("aimetcli_bc/corrected_float")

            def emit_float(fsrc=fsrc, d=d, ffixed=ffixed):
                corrected_float[id(fsrc)] = out = b.op("Add", [fsrc, d_values[d]], ffixed)
                b.redirect(fsrc, out)

            after.setdefault(id(fsrc), []).append(emit_float)
    if grids:
        if float_path is None:
            raise ValueError("in-graph grids need the float path")
        for gr in grids:
            if gr.tensor in inputs:
                b.grid(sim_values[gr.tensor], gr)
            else:
                x = float_values[gr.tensor]
                after.setdefault(id(x), []).append(lambda x=x, gr=gr: b.grid(corrected_float.get(id(x), x), gr))
        b.place_after(None)
    for node in (*sim_nodes, *float_nodes):
        for out in node.outputs:
            for fn in after.pop(id(out), []):
                fn()
        b.place_after(node)
    if after:  # a value no node produces: a bug, not a user error
        raise AimetCliError(f"bias correction lost track of {len(after)} values; please report it", ErrorKind.RUNTIME)
    add_outputs(graph, [d_values[d] for d in outputs.values()] + list(scales.values()))
    return sim, outputs, mean_inputs, {ref: v.name or "" for ref, v in scales.items()}
