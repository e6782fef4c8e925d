"""AdaRound's second moments: one onnxruntime graph per pass, the layers' patches and their sums.

The moments come out of one onnxruntime graph per pass (:func:`moments_graph`): the FP32 model
and a copy with fake-quantized weights read the same inputs, cut after the target layers' inputs
(:func:`_prune`: onnxruntime runs every node of a graph, so a pass for an early layer would
otherwise run both whole models), and at each target layer both inputs are turned into patches
in the graph: for a Conv, one strided Slice of the padded input per kernel tap, stacked
(channel c*k + t = input channel c shifted by tap t); for ConvTranspose (and auto_pad) a one-hot
kernel, E [C*k, 1, kh, kw] with E[c*k + t, 0, tap t] = 1 and group C, which gives per output
position the values each weight multiplies. Ungrouped layers' patches become rows [N*P, d] and
one Gemm with transA gives the sums in the graph, so only d x d leaves onnxruntime; a grouped
Conv's input leaves it (or comes from the cut) and numpy makes its patches, PATCH_BYTES at a
time (:func:`_conv_moments`); a grouped ConvTranspose's patches [N, g, d, P] leave it; numpy sums
the per-sample products (:func:`_group_products`; onnxruntime's batched MatMul of many small
matrices was 5x slower). A pass can start from a :class:`Cut` (tensors of both models kept by
an earlier pass) and keep the next one (adaround.cuts).
Memory: one run's patches, and G and C in float64 per layer: a layer whose G and C would pass
adaround.MOMENT_BYTES is skipped with a warning rather than taking the machine's memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli import runtime
from aimetcli.calibration.data import feed_rows
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.graph_builder import Builder, add_outputs, editable_copy, merge, taken_names, values_by_name
from aimetcli.kernels.adaround_problem import LayerProblem, low_rank
from aimetcli.kernels.quant import Encoding
from aimetcli.layers import Layer

PREFIX = "aimetcli_ar/"
Q_PREFIX = PREFIX + "q/"  # the quantized copy's names in the joint graph (graph_builder.merge)


@dataclass
class Target:
    layer: Layer
    weight: str
    enc: Encoding
    problem: LayerProblem | None = None


@dataclass
class Cut:
    """Tensors of both models at a cut through the graph (joint graph names), one array per run of
    the data in order: a later pass is fed them instead of running the models from their inputs."""

    values: dict[str, list[np.ndarray]] = field(default_factory=dict)
    dtypes: dict[str, ir.DataType] = field(default_factory=dict)
    nbytes: int = 0

    def add(self, name: str, value: np.ndarray) -> None:
        self.values.setdefault(name, []).append(value)
        self.dtypes.setdefault(name, ir.DataType.from_numpy(value.dtype))
        self.nbytes += value.nbytes


def cut_names(names: Collection[str], quantized: bool) -> list[str]:
    """The joint graph's names of the FP32 model's node outputs ``names``: each, and (``quantized``:
    the graph holds a quantized copy) its copy's, renamed as :func:`moments_graph` renames the
    copy's node outputs (graph inputs and shared initializers, which keep their names, are no
    node's output)."""
    out = []
    for name in sorted(names):
        out.append(name)
        if quantized:
            out.append(Q_PREFIX + name)
    return out


# ----------------------------------------------------------------------------- weight layout
def weight_matrix(layer: Layer, w: np.ndarray) -> np.ndarray:
    """The weight as [g, m, d]: m output channels of a group by d = its input channels x taps,
    in the order of the patches (input channel major, taps minor)."""
    groups = layer.groups
    if layer.op_type == "Conv":
        return w.reshape(groups, w.shape[0] // groups, -1)
    if layer.op_type == "ConvTranspose":
        cin, m = w.shape[0], w.shape[1]
        return w.reshape(groups, cin // groups, m, -1).transpose(0, 2, 1, 3).reshape(groups, m, -1)
    return (w if layer.spec.out_axis == 0 else w.T)[None]  # Gemm / MatMul: [1, N, K]


def weight_from_matrix(layer: Layer, w2: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`weight_matrix`."""
    groups = layer.groups
    if layer.op_type == "Conv":
        return w2.reshape(shape)
    if layer.op_type == "ConvTranspose":
        cin, m = shape[0], shape[1]
        return w2.reshape(groups, m, cin // groups, -1).transpose(0, 2, 1, 3).reshape(shape)
    return w2[0] if layer.spec.out_axis == 0 else np.ascontiguousarray(w2[0].T)


def grid_of(layer: Layer, enc: Encoding, w2: np.ndarray):
    """Scale, lowest and highest integer (relative to zero) as [g, m, 1] or [1, 1, 1]."""
    shape = (w2.shape[0], w2.shape[1], 1) if enc.per_channel else (1, 1, 1)
    scale = enc.scale.astype(np.float64).reshape(shape)
    offset = enc.offset.reshape(shape).astype(np.float64)
    return scale, offset, offset + enc.num_steps


# ----------------------------------------------------------------------------- the graph
class _Nodes(Builder):
    def __init__(self, graph: ir.Graph, taken: set[str], opset: int):
        super().__init__(graph, taken)
        self.opset = opset

    def name(self, base: str) -> str:
        return self.unique(PREFIX + base, lambda _, i: f"{PREFIX}{base}_{i}")

    def op(self, op: str, inputs: list[ir.Value], **attrs) -> ir.Value:
        return self.node(op, inputs, self.name(op), **attrs)

    def const(self, array: np.ndarray) -> ir.Value:
        return self.initializer(array, self.name("const"))

    def gemm(self, a: ir.Value, c: ir.Value, **attrs) -> ir.Value:
        """Gemm(a, c) without a bias: below opset 11 Gemm requires its C input, so a zero one."""
        inputs = [a, c] if self.opset >= 11 else [a, c, self.const(np.zeros((), np.float32))]
        return self.op("Gemm", inputs, **attrs)


def _patch_matrix(b: _Nodes, layer: Layer, x: ir.Value, w_shape: tuple[int, ...], onehot: dict) -> tuple[ir.Value, bool]:
    """Nodes turning the layer's input ``x`` into its patches: (name, rows) with rows True for
    [positions, d] (one group), False for [N, g, d, positions a sample]."""
    groups = layer.groups
    if layer.spec.group_axis is None:  # Gemm / MatMul: the rows of [.., K]
        k = w_shape[layer.spec.in_axis]
        return b.op("Reshape", [x, b.const(np.array([-1, k], np.int64))]), True
    attrs = {a.name: a.value for a in layer.node.attributes.values()
             if a.name in ("strides", "pads", "dilations", "auto_pad", "output_padding", "output_shape")}
    kernel = tuple(w_shape[2:])
    taps = int(np.prod(kernel))
    cin = layer.spec.in_channels(w_shape, groups)
    d = cin // groups * taps
    trivial = taps == 1 and layer.op_type == "Conv" and not any(attrs.get("pads", [])) \
        and all(s == 1 for s in attrs.get("strides", [1])) and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
    if trivial:
        patches = x
    elif layer.op_type == "Conv" and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID") and b.opset >= 11:
        patches = _tap_slices(b, x, kernel, attrs)
    else:
        key = (layer.op_type, cin, kernel)
        if key not in onehot:
            e = np.zeros((cin * taps, 1, taps) if layer.op_type == "Conv" else (cin, taps, taps), np.float32)
            e.reshape(cin, taps, taps)[:, np.arange(taps), np.arange(taps)] = 1
            onehot[key] = b.const(e.reshape(e.shape[:2] + kernel))
        patches = b.op(layer.op_type, [x, onehot[key]], group=cin, kernel_shape=list(kernel), **attrs)
    if groups == 1:  # [N, d, P] -> [N, P, d] -> [N*P, d]
        flat = b.op("Reshape", [patches, b.const(np.array([0, d, -1], np.int64))])
        return b.op("Reshape", [b.op("Transpose", [flat], perm=[0, 2, 1]),
                                  b.const(np.array([-1, d], np.int64))]), True
    # grouped: [N, g, d, P], each sample's products summed after (moving g first would copy the
    # patches twice more: measured 1.1-1.7 s -> s a depthwise layer of the MobileNetV2 sample)
    return b.op("Reshape", [patches, b.const(np.array([0, groups, d, -1], np.int64))]), False


def _tap_slices(b: _Nodes, x: ir.Value, kernel: tuple[int, ...], attrs: dict) -> ir.Value:
    """A Conv's patches [N, C * taps, *out] (channel major, taps minor) as strided slices of the
    padded input, one a tap, stacked: the one-hot grouped Conv gives the same values but took 0.8 s
    a pass on one depthwise layer of the MobileNetV2 sample (onnxruntime's grouped Conv of 1 -> 9
    channels a group), the slices 0.05 s."""
    rank = len(kernel)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    pads = list(attrs.get("pads", [0] * 2 * rank))
    if any(pads):
        zero = b.const(np.array(0, np.float32))
        x = b.op("Pad", [x, b.const(np.array([0, 0, *pads[:rank], 0, 0, *pads[rank:]], np.int64)), zero])
    axes = b.const(np.arange(2, 2 + rank, dtype=np.int64))
    steps = b.const(np.array(strides, np.int64))
    unsqueeze = b.const(np.array([2], np.int64))
    taps = []
    for offsets in itertools.product(*(range(k) for k in kernel)):
        starts = [o * dl for o, dl in zip(offsets, dilations)]
        ends = [-(k - 1 - o) * dl or np.iinfo(np.int64).max for o, k, dl in zip(offsets, kernel, dilations)]
        tap = b.op("Slice", [x, b.const(np.array(starts, np.int64)), b.const(np.array(ends, np.int64)), axes, steps])
        taps.append(b.op("Unsqueeze", [tap, unsqueeze]) if b.opset >= 13 else b.op("Unsqueeze", [tap], axes=[2]))
    return b.op("Concat", taps, axis=2)  # [N, C, taps, *out]: reshaped as [N, C * taps, *out] after


def _products(b: _Nodes, a: ir.Value, c: ir.Value) -> ir.Value:
    """sum over positions of a c^T, [d, d] from rows [positions, d] (Gemm, no copy)."""
    return b.gemm(a, c, transA=1)


def _output_energy(b: _Nodes, t: Target, a: ir.Value) -> ir.Value:
    """sum ||W f||^2 over positions (the loss's constant, tr(W F W^T)), from the FP32 rows."""
    w2 = weight_matrix(t.layer, np.asarray(t.layer.weight_array(), np.float32))
    return b.op("ReduceSumSquare", [b.gemm(a, b.const(np.ascontiguousarray(w2[0])), transB=1)],
                  keepdims=0)


def _numpy_patches(layer: Layer) -> bool:
    """Whether numpy makes the layer's patches from its input (:func:`_conv_patches`): a grouped
    Conv with explicit pads, whose patches would otherwise leave onnxruntime as [N, g, d, P]."""
    auto_pad = next((a.value for a in layer.node.attributes.values() if a.name == "auto_pad"), "NOTSET")
    return layer.op_type == "Conv" and layer.groups > 1 and auto_pad in ("NOTSET", "VALID")


def _conv_patches(layer: Layer, x: np.ndarray, buffers: dict, slot: int) -> np.ndarray:
    """A Conv's patches [N, g, d, P] (d = channels of a group x taps, channel major) from its input
    x [N, C, *spatial]: the input copied into a zero-padded buffer, then one strided view a tap
    copied into the patch buffer. Both buffers are kept in ``buffers`` (under ``slot``) for the
    next runs: the patches of a depthwise layer are 9 times its input, and taking them out of
    onnxruntime allocated and copied them anew every run (measured: copying 2 x 21 MB out of a
    session took 30 ms of CPU, numpy's products on them 7 ms)."""
    attrs = {a.name: a.value for a in layer.node.attributes.values()}
    w_shape = tuple(layer.weight.shape)
    kernel = w_shape[2:]
    rank = len(kernel)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    pads = list(attrs.get("pads", [0] * 2 * rank))
    n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
    padded_shape = tuple(s + pads[i] + pads[i + rank] for i, s in enumerate(spatial))
    out = tuple((p - dl * (k - 1) - 1) // st + 1 for p, k, st, dl in zip(padded_shape, kernel, strides, dilations))
    taps = int(np.prod(kernel))
    key = (slot, x.shape)
    if key not in buffers:
        buffers[key] = (np.zeros((n, c, *padded_shape), np.float32), np.empty((n, c, taps, *out), np.float32))
    padded, patches = buffers[key]
    padded[(slice(None), slice(None), *(slice(pads[i], pads[i] + s) for i, s in enumerate(spatial)))] = x
    for tap, offsets in enumerate(itertools.product(*(range(k) for k in kernel))):
        view = tuple(slice(o * dl, o * dl + (m - 1) * st + 1, st) for o, dl, m, st in zip(offsets, dilations, out, strides))
        np.copyto(patches[:, :, tap], padded[(slice(None), slice(None), *view)])
    return patches.reshape(n, layer.groups, c // layer.groups * taps, -1)


# numpy makes a grouped Conv's patches for this many bytes of them at a time (_conv_moments)
PATCH_BYTES = 32 << 20


def _conv_moments(layer: Layer, x_q: np.ndarray, x_f: np.ndarray | None, w2: np.ndarray, buffers: dict
                  ) -> tuple[tuple, int]:
    """A grouped Conv's (G, C, sum ||W f||^2) over one run and its positions, from its inputs in
    the quantized and FP32 models (x_f None: the same), PATCH_BYTES of patches at a time: a
    depthwise layer's patches are 9 times its input (the full-size MobileNetV2's first blocks:
    350 MB a run of 32 samples and a model)."""
    taps = int(np.prod(layer.weight.shape[2:]))
    per_sample = 4 * taps * x_q[:1].size  # about: the patches of one sample (stride 1)
    step = max(1, min(x_q.shape[0], PATCH_BYTES // max(per_sample, 1)))
    gram = cross = None
    energy, positions = 0.0, 0
    for start in range(0, x_q.shape[0], step):
        a = _conv_patches(layer, x_q[start:start + step], buffers, 0)
        c = a if x_f is None else _conv_patches(layer, x_f[start:start + step], buffers, 1)
        gram = _accumulate(gram, _group_products(a, a))
        cross = gram if x_f is None else _accumulate(cross, _group_products(a, c))
        energy += float(np.sum(np.square(np.matmul(w2, c)), dtype=np.float64))
        positions += a.shape[0] * a.shape[3]
    return (gram, cross, energy), positions


@dataclass
class _Outputs:
    """A target's outputs of the joint graph: G, C, tr(W F W^T) and the patch matrix's shape, or
    (``patches``) the quantized and FP32 patches [N, g, d, P] whose products numpy takes."""

    gram: str
    cross: str  # the same as gram where the layer reads a graph input (x = f)
    energy: str
    size: str
    patches: bool
    conv: bool = False  # gram / cross are the grouped Conv's inputs: numpy makes the patches (_conv_patches)
    rows: bool = False  # gram / cross are the patch rows X and F [P, d] themselves (few positions: low_rank)

    def names(self) -> list[str]:
        return [n for n in (self.gram, self.cross, self.energy, self.size) if n]


def _group_products(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """sum over samples and positions of a c^T per group, [g, d, d] from [N, g, d, P]: numpy's
    batched products, sample by sample (onnxruntime's batched MatMul of small matrices took 5x as
    long; summing one [N, g, d, d] product would hold N times the moments)."""
    total = np.matmul(a[0], c[0].transpose(0, 2, 1))
    for n in range(1, a.shape[0]):
        total += np.matmul(a[n], c[n].transpose(0, 2, 1))
    return total


def row_positions(layer: Layer, shape: tuple[int, ...], samples: int | None) -> int | None:
    """The positions over ``samples`` samples of a layer that keeps its patch rows instead of G and
    C (few positions: ``Layer.positions_per_sample``, ``low_rank``), else None."""
    per_sample = layer.positions_per_sample() if samples else None
    if per_sample is None or not low_rank(layer.matrix_dims(shape)[1], samples * per_sample):
        return None
    return samples * per_sample


def moments_graph(fp32: ir.Model, quantized: ir.Model | None, targets: list[Target], *,
                  start: Cut | None = None, keep: Collection[str] = (),
                  samples: int | None = None) -> tuple[ir.Model, list[_Outputs]]:
    """The joint graph and, per target, its outputs (:class:`_Outputs`): a copy of ``fp32``
    (tensors shared) with a copy of ``quantized``'s nodes (None: the layers' inputs come from the
    FP32 model, x = f) and the patches' nodes. Both models are left as they were. ``samples``:
    the data's size; a layer with few positions over them (:func:`row_positions`) returns its patch
    rows instead of their products.

    ``start``: tensors of both models already known (:class:`Cut`), fed as graph inputs; the
    nodes that computed them are not run. ``keep``: names of the FP32 model's tensors to return
    too, for both models (the joint names in :func:`cut_names`), to start a later pass from.
    """
    fp32 = editable_copy(fp32)
    quantized = editable_copy(quantized) if quantized is not None else None
    graph = fp32.graph
    taken = taken_names(graph) | (taken_names(quantized.graph) if quantized is not None else set())
    fp_values = values_by_name(graph)
    q_values = merge(graph, quantized.graph, Q_PREFIX) if quantized is not None else fp_values
    graph.outputs.clear()
    inputs = {v.name for v in graph.inputs}
    fed = dict(start.dtypes) if start is not None else {}
    b = _Nodes(graph, taken, g.opset_version(fp32))
    onehot: dict = {}
    names = []
    for t in targets:
        x_name = t.layer.node.inputs[0].name
        x_f, x_q = fp_values[x_name], q_values[x_name]
        if _numpy_patches(t.layer):  # the inputs leave onnxruntime (or are fed): numpy makes the patches
            out = _Outputs(x_q.name, x_f.name, "", "", True, True)
            names.append(out)
            add_outputs(graph, [v for v in dict.fromkeys((x_q, x_f)) if v.name not in inputs and v.name not in fed],
                        None)
            continue
        shape = tuple(t.layer.weight.shape)
        a_f = _patch_matrix(b, t.layer, x_f, shape, onehot)
        a_q = a_f if x_q is x_f else _patch_matrix(b, t.layer, x_q, shape, onehot)
        if a_f[1] and row_positions(t.layer, shape, samples) is not None:
            out = _Outputs(a_q[0].name, a_f[0].name, "", "", False, rows=True)
        elif a_f[1]:
            gram = _products(b, a_q[0], a_q[0])
            out = _Outputs(gram.name, gram.name if a_q is a_f else _products(b, a_q[0], a_f[0]).name,
                           _output_energy(b, t, a_f[0]).name, b.op("Shape", [a_f[0]]).name, False)
        else:  # grouped: the patches leave onnxruntime (see _group_products)
            out = _Outputs(a_q[0].name, a_f[0].name, "", "", True)
        names.append(out)
        add_outputs(graph, [b.values[n] for n in out.names() if n != out.size])
        if out.size:
            add_outputs(graph, [b.values[out.size]], ir.DataType.INT64)
    joint_values = values_by_name(graph)
    add_outputs(graph, [joint_values[n] for n in cut_names(keep, quantized is not None) if n not in fed], None)
    _prune(graph, fed)
    return fp32, names


def _prune(graph: ir.Graph, fed: dict[str, ir.DataType] | None = None) -> None:
    """Drop the nodes and initializers the outputs do not depend on (onnxruntime runs every node):
    a pass then runs both models only up to its layers' inputs. ``fed``: tensors given as graph
    inputs (name -> element type): their readers read a new graph input of that name instead, the
    nodes that would compute only them are dropped, and graph inputs nothing reads go."""
    for name, dtype in sorted((fed or {}).items()):
        computed = next((o for node in graph for o in node.outputs if o.name == name), None)
        if computed is None or not computed.uses():
            continue
        given = ir.Value(name=name, type=ir.TensorType(dtype))
        computed.name = name + "/computed"  # its node may stay for another output: one value a name
        computed.replace_all_uses_with(given)
        graph.inputs.append(given)
    needed = {id(v) for v in graph.outputs}
    dead = []
    for node in reversed(graph):  # topological order: readers after writers
        if any(id(o) in needed for o in node.outputs):
            needed.update(id(v) for v in _read_values(node))
        else:
            dead.append(node)
    for node in dead:  # a dead If's branches may read a dead node's output: they go with it
        _detach_subgraphs(node)
    graph.remove(dead, safe=True)
    for name, value in list(graph.initializers.items()):
        if id(value) not in needed:
            graph.initializers.pop(name)
    read = [v for v in graph.inputs if id(v) in needed]
    if len(read) < len(graph.inputs):
        graph.inputs.clear()
        graph.inputs.extend(read)


def _detach_subgraphs(node: ir.Node) -> None:
    """Make the nodes inside ``node``'s subgraphs (at any depth) read nothing, so that they no
    longer count as users of outer values: ``node`` is being removed, and they with it."""
    for sub in g.subgraphs(node):
        for inner in sub:
            _detach_subgraphs(inner)
            for i in range(len(inner.inputs)):
                inner.replace_input_with(i, None)


def _read_values(node: ir.Node):
    """The values a node reads, its subgraphs' reads of outer values included."""
    yield from (v for v in node.inputs if v is not None)
    for sub in g.subgraphs(node):
        for inner in sub:
            yield from _read_values(inner)


def _accumulate(total: np.ndarray | None, value: np.ndarray) -> np.ndarray:
    """total + value in float64 (float32 added in place, without a float64 copy)."""
    if total is None:
        return np.asarray(value, np.float64)
    total += value
    return total


def collect_moments(joint: ir.Model, names, targets: list[Target], dataset, run_size: int, progress, *,
                    start: Cut | None = None, keep: Collection[str] = (), keep_bytes: int = 0) -> Cut | None:
    """Run the joint graph over the data; set each target's problem (moments summed in float64).

    ``start``: the :class:`Cut` the graph was built from (its tensors are fed, run by run).
    ``keep``: joint names of tensors the graph outputs for a later pass (``moments_graph``'s
    ``keep``, :func:`cut_names`): returned as a Cut (with ``start``'s own tensors that are kept
    too) unless they pass ``keep_bytes`` over the whole data, then None (dropped as soon as they do).
    """
    fed = start.values if start is not None else {}
    produced = {o.name for o in joint.graph.outputs}  # the rest is fed: the data or ``start``
    outputs = [n for n in dict.fromkeys(n for out in names for n in out.names()) if n in produced]
    kept_out = [n for n in keep if n not in fed]
    session = runtime.Session(joint, runtime.MEASURE) if outputs or kept_out else None
    inputs = set(session.input_names) if session is not None else set()
    buffers: dict = {}
    cut: Cut | None = Cut() if keep else None
    matrices = [weight_matrix(t.layer, np.asarray(t.layer.weight_array(), np.float32)) for t in targets]
    sums: list[list] = [[None, None, 0.0] for _ in targets]  # G, C, energy (float64)
    rows: list[tuple[list, list]] = [([], []) for _ in targets]  # X and F run by run (_Outputs.rows)
    positions = [0] * len(targets)
    for run, data in enumerate(dataset.batches(run_size)):
        given = {**data, **{k: v[run] for k, v in fed.items()}}
        feeds = {k: v for k, v in given.items() if k in inputs}
        got = session.run(feeds, outputs + kept_out) if session is not None else []
        values = {**given, **dict(zip(outputs, got))}
        if cut is not None:
            for name, value in itertools.chain(zip(kept_out, got[len(outputs):]),
                                               ((n, fed[n][run]) for n in keep if n in fed)):
                cut.add(name, value)
            if cut.nbytes > keep_bytes:
                cut = None
        for i, out in enumerate(names):
            if out.rows:
                x = np.array(values[out.gram], np.float32)  # a copy: the run's outputs go
                f = x if out.cross == out.gram else np.array(values[out.cross], np.float32)
                rows[i][0].append(x)
                rows[i][1].append(f)
                sums[i][2] += float(np.sum(np.square(f @ matrices[i][0].T, dtype=np.float64)))
                positions[i] += x.shape[0]
                continue
            if out.conv:
                batch, n = _conv_moments(targets[i].layer, values[out.gram],
                                         None if out.cross == out.gram else values[out.cross], matrices[i], buffers)
                positions[i] += n
            elif out.patches:
                a, c = values[out.gram], values[out.cross]
                gram = _group_products(a, a)
                batch = (gram, gram if out.cross == out.gram else _group_products(a, c),
                         float(np.sum(np.square(np.matmul(matrices[i], c)), dtype=np.float64)))
                positions[i] += a.shape[0] * a.shape[3]
            else:
                shape = values[out.size]
                batch = (values[out.gram], values[out.cross], float(values[out.energy]))
                positions[i] += int(shape[0])
            acc = sums[i]
            acc[0] = _accumulate(acc[0], batch[0])
            acc[1] = acc[0] if out.cross == out.gram else _accumulate(acc[1], batch[1])
            acc[2] += batch[2]
        if progress is not None:
            progress(feed_rows(data))
    for t, w2, (gram, cross, energy), (xs, fs), n in zip(targets, matrices, sums, rows, positions):
        scale, low, high = grid_of(t.layer, t.enc, w2)
        d = w2.shape[2]
        if xs:  # G = X^T X and C = X^T F stay as their factors
            x = np.concatenate(xs)[None]
            f = x if fs[0] is xs[0] else np.concatenate(fs)[None]
            finite = bool(np.all(np.isfinite(x)) and np.all(np.isfinite(f)) and np.isfinite(energy))
            problem = LayerProblem(w2, scale, low, high, None, None, float(energy), n, rows=(x, f))
        else:
            finite = bool(np.all(np.isfinite(gram)) and np.all(np.isfinite(cross)) and np.isfinite(energy))
            problem = LayerProblem(w2, scale, low, high, gram.reshape(-1, d, d), cross.reshape(-1, d, d),
                                      float(energy), n)
        if not finite:
            raise AimetCliError(f"the input of layer {t.layer.name!r} is NaN or Inf on the calibration data; "
                                "check the data and the model", ErrorKind.DATA)
        t.problem = problem
    return cut
