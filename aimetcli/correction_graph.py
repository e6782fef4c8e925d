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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aimetcli.big_tensors import SplicedProto
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.kernels.quant import AIMET_MIN_RANGE, minimum_scale, symmetric_step_counts
from aimetcli.quantsim.insert import ActivationConstants


@dataclass(frozen=True)
class Target:
    """A layer to measure: its output's name in the model and in the sim (float side), its shape."""

    reference: str
    sim: str
    rank: int
    channels: int
    correct: bool

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


def opset(proto: onnx.ModelProto) -> int:
    return next((op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")), 1)


class _Builder:
    def __init__(self, joint: onnx.ModelProto, taken: set[str]):
        self.graph = joint.graph
        self.opset = opset(joint)
        self.taken = taken
        self._consts: dict[tuple, str] = {}

    def name(self, base: str) -> str:
        name = base
        i = 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(f"aimetcli_bc/{op}")
        self.graph.node.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def const(self, value, dtype) -> str:
        key = (float(value) if np.ndim(value) == 0 else tuple(np.ravel(value)), np.dtype(dtype).str)
        if key not in self._consts:
            name = self.name("aimetcli_bc/const")
            self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
            self._consts[key] = name
        return self._consts[key]

    def reduce_mean(self, x: str, rank: int) -> str:
        if rank >= 3:
            # the spatial mean first: GlobalAveragePool runs on onnxruntime's blocked (NCHWc)
            # layout, so the tensor needs no copy back to NCHW; then the mean over the batch
            x, rank = self.node("GlobalAveragePool", [x]), 2
        axes = [i for i in range(rank) if i != 1]
        if self.opset >= 18:
            return self.node("ReduceMean", [x, self.const(np.array(axes, np.int64), np.int64)], keepdims=1)
        return self.node("ReduceMean", [x], axes=axes, keepdims=1)

    def grid(self, x: str, grid: Grid) -> None:
        """Nodes computing ``grid``'s scale, zero point and Clip bounds from tensor ``x``."""
        f64 = TensorProto.DOUBLE
        zero = self.const(0.0, np.float64)
        pooled = self.node("GlobalMaxPool", [x]) if grid.rank == 4 else x
        hi = self.node("Cast", [self.node("ReduceMax", [pooled], keepdims=0)], to=f64)
        hi = self.node("Max", [hi, zero])
        if grid.non_negative:
            lo = zero
        else:
            lo = self.node("Min", [self.node("Cast", [self.node("ReduceMin", [x], keepdims=0)], to=f64), zero])
        floor = max(AIMET_MIN_RANGE, grid.steps * minimum_scale(grid.steps))
        hi = self.node("Max", [hi, self.node("Add", [lo, self.const(floor, np.float64)])])
        c = grid.constants
        if grid.symmetric:
            pos, neg = symmetric_step_counts(grid.steps)
            scale = self.node("Max", [self.node("Div", [hi, self.const(float(pos), np.float64)]),
                                      self.node("Div", [self.node("Neg", [lo]), self.const(float(neg), np.float64)])])
            zp = zero
        else:
            scale = self.node("Div", [self.node("Sub", [hi, lo]), self.const(float(grid.steps), np.float64)])
            # round half away from zero of lo / scale <= 0: -floor(0.5 - lo / scale)
            neg = self.node("Sub", [self.const(0.5, np.float64), self.node("Div", [lo, scale])])
            zp = self.node("Clip", [self.node("Floor", [neg]), zero, self.const(float(grid.steps), np.float64)])
            self.node("Cast", [zp], c.zero_point, to=grid.zero_point_type)
        scale32 = self.node("Cast", [scale], c.scale, to=TensorProto.FLOAT)
        if c.clip_min is not None:
            for bound, out in ((grid.qmin, c.clip_min), (grid.qmax, c.clip_max)):
                steps_from_zero = self.node("Cast", [self.node("Sub", [self.const(float(bound), np.float64), zp])],
                                            to=TensorProto.FLOAT)
                self.node("Mul", [steps_from_zero, scale32], out)


def build(sim_model: SplicedProto, float_model: SplicedProto | None, targets: list[Target],
          grids: list[Grid]) -> tuple[SplicedProto, dict[str, str], dict[str, str]]:
    """The joint model, {layer output: name of its ``d`` output} and {layer output: name of the
    graph input that takes its FP32 per-channel mean (shape ``Target.mean_shape``)}."""
    sim = sim_model.proto
    float_path = float_model.proto if float_model is not None else None
    paths = [p for p in (sim, float_path) if p is not None]
    taken = {v for p in paths for n in p.graph.node for v in (*n.input, *n.output)}
    taken |= {t.name for p in paths for t in p.graph.initializer} | {i.name for p in paths for i in p.graph.input}
    inputs = {i.name for i in sim.graph.input}
    dropped = {n for gr in grids for n in (gr.constants.scale, gr.constants.zero_point, gr.constants.clip_min,
                                         gr.constants.clip_max) if n is not None}
    dropped -= {gr.constants.zero_point for gr in grids if gr.symmetric}  # symmetric: zero point stays 0

    joint_model = sim_model.copy()
    joint = joint_model.proto
    graph = joint.graph
    del graph.node[:]
    del graph.output[:]
    del graph.value_info[:]
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    b = _Builder(joint, taken)

    float_name: Callable[[str], str] | None = None
    if float_path is not None:
        # share what the float path holds with the same data as the sim (the fake-quantized weights)
        known = {t.name: t for t in kept}
        prefix = "aimetcli_bc_f/"
        while any(name.startswith(prefix) for name in taken):
            prefix = "_" + prefix
        shared = {t.name for t in float_path.graph.initializer
                  if _same_tensor(known.get(t.name), t, sim_model.arrays, float_model.arrays)}
        for t in float_path.graph.initializer:
            if t.name not in shared:
                graph.initializer.append(_renamed(t, prefix + t.name))
                if t.name in float_model.arrays:
                    joint_model.arrays[prefix + t.name] = float_model.arrays[t.name]
        float_name = _prefixed(prefix, keep=shared | inputs)

    outputs: dict[str, str] = {}
    mean_inputs: dict[str, str] = {}
    after: dict[str, list[Callable[[], None]]] = {}  # sim/float value -> nodes to emit once it exists
    redirect_sim: dict[str, str] = {}
    redirect_float: dict[str, str] = {}
    for t in targets:
        fp_mean = b.name("aimetcli_bc/fp32_mean")
        graph.input.append(helper.make_tensor_value_info(fp_mean, TensorProto.FLOAT, t.mean_shape))
        mean_inputs[t.reference] = fp_mean
        d = b.name("aimetcli_bc/d")
        src = t.sim
        fixed = b.name("aimetcli_bc/corrected") if t.correct else None
        outputs[t.reference] = d

        def emit(t=t, src=src, d=d, fp_mean=fp_mean, fixed=fixed):
            b.node("Sub", [fp_mean, b.reduce_mean(src, t.rank)], d)
            if fixed:
                b.node("Add", [src, d], fixed)

        after.setdefault(src, []).append(emit)
        if fixed:
            redirect_sim[src] = fixed
            if float_name is not None:
                fsrc = float_name(t.reference)
                ffixed = b.name("aimetcli_bc/corrected_float")
                redirect_float[fsrc] = ffixed
                after.setdefault(fsrc, []).append(lambda fsrc=fsrc, d=d, ffixed=ffixed: b.node("Add", [fsrc, d],
                                                                                                ffixed))
    if grids:
        if float_name is None:
            raise ValueError("in-graph grids need the float path")
        for gr in grids:
            x = float_name(gr.tensor)
            if gr.tensor in inputs:
                b.grid(x, gr)
            else:
                after.setdefault(x, []).append(lambda x=x, gr=gr: b.grid(redirect_float.get(x, x), gr))
    for path, rename, redirect in ((sim, None, redirect_sim), (float_path, float_name, redirect_float)):
        if path is None:
            continue
        for node in path.graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            if rename is not None:
                copy.name = rename(node.name) if node.name else ""
            _rename_node(copy, rename or (lambda name: name), redirect)
            graph.node.append(copy)
            for out in copy.output:
                for fn in after.pop(out, []):
                    fn()
    if after:  # a value no node produces: a bug, not a user error
        raise AimetCliError(f"bias correction lost track of {sorted(after)}; please report it", ErrorKind.RUNTIME)
    for d in outputs.values():
        graph.output.append(helper.make_tensor_value_info(d, TensorProto.FLOAT, None))
    joint_model.arrays = {t.name: joint_model.arrays[t.name] for t in graph.initializer if t.name in joint_model.arrays}
    return joint_model, outputs, mean_inputs


def _same_tensor(a: onnx.TensorProto | None, b: onnx.TensorProto, arrays_a: dict[str, np.ndarray],
                 arrays_b: dict[str, np.ndarray]) -> bool:
    """Whether the sim's initializer ``a`` holds what the float path's ``b`` holds (same name)."""
    if a is None or a != b:  # the protobufs (data or, for big tensors, dims and type) differ
        return False
    x, y = arrays_a.get(a.name), arrays_b.get(b.name)
    if x is None or y is None:
        return x is None and y is None
    return x is y or (x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y))


def _prefixed(prefix: str, keep: set[str]) -> Callable[[str], str]:
    """Value names of the float path: ``prefix`` + name, except empty names and those in ``keep``
    (graph inputs and initializers shared with the sim)."""
    return lambda name: name if not name or name in keep else prefix + name


def _renamed(t: onnx.TensorProto, name: str) -> onnx.TensorProto:
    if t.name == name:
        return t
    out = onnx.TensorProto()
    out.CopyFrom(t)
    out.name = name
    return out


def _rename_node(node: onnx.NodeProto, rename: Callable[[str], str], redirect: dict[str, str]) -> None:
    """Rename a node's values, and the outer-scope values its subgraphs read."""
    for i, name in enumerate(node.input):
        new = rename(name)
        node.input[i] = redirect.get(new, new)
    for i, name in enumerate(node.output):
        node.output[i] = rename(name)
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            local = {o for n in sub.node for o in n.output} | {i.name for i in sub.input}
            local |= {t.name for t in sub.initializer}
            for n in sub.node:
                _rename_node(n, lambda v, local=local: v if v in local else rename(v), redirect)
