"""Hand-built graphs and an onnxruntime runner with graph optimizations off.

ORT would otherwise fuse BatchNormalization itself and hide folding bugs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def init(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name=name)


def rand(*shape, scale=1.0, rng=RNG) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def bn_inits(prefix: str, c: int, rng=RNG) -> list[onnx.TensorProto]:
    return [
        init(f"{prefix}_g", rng.uniform(0.5, 1.5, c).astype(np.float32)),
        init(f"{prefix}_b", rng.normal(0, 0.3, c).astype(np.float32)),
        init(f"{prefix}_m", rng.normal(0, 0.2, c).astype(np.float32)),
        init(f"{prefix}_v", rng.uniform(0.5, 2.0, c).astype(np.float32)),
    ]


def bn_node(prefix: str, x: str, y: str, eps=1e-5) -> onnx.NodeProto:
    return helper.make_node(
        "BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], [y],
        name=prefix, epsilon=eps,
    )


def make_model(nodes, inputs, outputs, inits, opset=13) -> onnx.ModelProto:
    def vi(spec):
        name, shape = spec
        if shape is None:
            return helper.make_value_info(name, helper.make_tensor_type_proto(TensorProto.FLOAT, None))
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(nodes, "g", [vi(i) for i in inputs], [vi(o) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    return finish(model)


def finish(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give outputs declared without a shape their inferred shape, then check."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            out.type.CopyFrom(known[out.name].type)
        if not out.type.tensor_type.HasField("shape"):
            out.type.tensor_type.shape.SetInParent()
    onnx.checker.check_model(model)
    return model


def session(model) -> ort.InferenceSession:
    if isinstance(model, ir.Model):
        model = ir.serde.serialize_model(model)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run(model, feeds: dict) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def to_ir(model: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(model)


def op_count(model, op_type: str) -> int:
    if isinstance(model, ir.Model):
        return sum(1 for n in model.graph.all_nodes() if n.op_type == op_type)
    return sum(1 for n in model.graph.node if n.op_type == op_type)


def assert_same_outputs(a, b, feeds, rtol=1e-5, atol=1e-6):
    ya, yb = run(a, feeds), run(b, feeds)
    assert len(ya) == len(yb)
    for x, y in zip(ya, yb):
        scale = max(1.0, float(np.abs(x).max()))
        np.testing.assert_allclose(y, x, rtol=rtol, atol=atol * scale)


def two_conv_classifier(c: int, dtype=np.float32) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers of Conv-BN-Relu twice (stride 2, 16x16 input "input"), Reshape, MatMul
    to "logits": BN that folds, a 2-D MatMul weight, and an int64 shape constant."""
    inits = [init("W1", rand(c, 3, 3, 3).astype(dtype)), init("W2", rand(c, c, 3, 3).astype(dtype)),
             init("W3", rand(c * 16, 10).astype(dtype))] + bn_inits("bn1", c) + bn_inits("bn2", c) + \
        [init("shape", np.array([0, -1], np.int64))]
    nodes = [
        helper.make_node("Conv", ["input", "W1"], ["c1"], pads=[1] * 4, strides=[2, 2]),
        bn_node("bn1", "c1", "b1"), helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1] * 4, strides=[2, 2]),
        bn_node("bn2", "c2", "b2"), helper.make_node("Relu", ["b2"], ["r2"]),
        helper.make_node("Reshape", ["r2", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "W3"], ["logits"]),
    ]
    return nodes, inits


def output_shift(reference: ir.Model, sim: ir.Model, dataset, *, batch_size: int = 32) -> dict[str, float]:
    """Per layer of ``reference``: mean over channels of |E[y_sim] - E[y_reference]| on the data.

    ``sim`` is a quantsim model of ``reference`` (or of a bias-corrected copy of it): this is the
    shift bias correction exists to remove, measured against the uncorrected FP32 model.
    """
    from aimetcli import runtime
    from aimetcli.bias_correction import _float_sources, _mean_pass
    from aimetcli.layers import as_layer

    layers = [la for n in reference.graph if (la := as_layer(n)) is not None]
    names = [la.output.name for la in layers]
    sim_names = _float_sources(sim, names)
    # a MatMul's channels are its last axis (2-D: axis 1)
    last = [la.spec.channel_axis == -1 and la.spec.bias_slot is None for la in layers]
    ref = _mean_pass(reference, names, dataset, batch_size,
                     channels_last=frozenset(n for n, x in zip(names, last) if x))
    # no graph optimizations: onnxruntime's rewrites of QDQ graphs are not the simulation
    q = _mean_pass(sim, sim_names, dataset, batch_size, policy=runtime.SIMULATE,
                   channels_last=frozenset(n for n, x in zip(sim_names, last) if x))
    return {n: float(np.mean(np.abs(ref[n] - q[s]))) for n, s in zip(names, sim_names)}
