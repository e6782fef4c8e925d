"""The biases a runtime stores as int32 on the grid s_input * s_weight (quantsim/bias_grid.py):
the sim rounds them as onnxruntime does, so the deployable model computes what the sim computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

from aimetcli.cli import main
from helpers import init, make_model, op_count, rand

RNG = np.random.default_rng(11)


def conv_relu(branch: bool):
    """Conv (bias) -> Relu -> Conv (bias) -> output; ``branch``: the first conv's output is read
    twice too (no Conv+Relu supergroup: it gets a quantizer of its own, which reads it alone)."""
    inits = [init("W1", rand(8, 3, 3, 3, rng=RNG)), init("B1", rand(8, rng=RNG)),
             init("W2", rand(4, 8, 1, 1, rng=RNG)), init("B2", rand(4, rng=RNG))]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"])]
    outputs = [("c2", None)]
    if branch:
        nodes.append(helper.make_node("Sigmoid", ["c1"], ["s1"]))
        outputs.append(("s1", None))
    return make_model(nodes, [("x", ["N", 3, 6, 6])], outputs, inits)


def _run(path, level, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})


@pytest.mark.parametrize("extra", [[], ["--per-channel"], ["--act-bw", "16"], ["--act-bw", "6"], ["branch"]])
def test_deployed_model_computes_the_sim(tmp_path, extra):
    """model_qdq.onnx under onnxruntime's basic optimizations (its WeightBiasQuantization pass
    included) gives the sim's outputs bit for bit; before quantsim rounded the biases, the pass
    moved every output of a layer with a bias."""
    branch = extra == ["branch"]
    src = tmp_path / "m.onnx"
    onnx.save(conv_relu(branch), src)
    x = RNG.standard_normal((16, 3, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    runner = CliRunner()
    r = runner.invoke(main, ["quantsim", str(src), "-o", str(tmp_path / "sim.onnx"), "--data", str(tmp_path / "x.npy"),
                             *([] if branch else extra)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["export", str(tmp_path / "sim.onnx"), "-o", str(tmp_path / "deploy")])
    assert r.exit_code == 0, r.output
    sim = onnx.load(tmp_path / "sim.onnx")
    # a narrow input grid (its Clip, not a DequantizeLinear, feeds the layer): the runtime leaves the bias float
    rounded = 0 if extra == ["--act-bw", "6"] else 2
    assert op_count(sim, "Round") == rounded
    qdq = tmp_path / "deploy" / "model_qdq.onnx"
    deployed = onnx.load(qdq)
    int32 = {t.name for t in deployed.graph.initializer if t.data_type == onnx.TensorProto.INT32}
    # the deployable model stores those biases' integers, as quantize_static does
    assert sum(1 for n in deployed.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32) == rounded
    want = _run(tmp_path / "sim.onnx", ort.GraphOptimizationLevel.ORT_DISABLE_ALL, x)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC):
        for a, b in zip(want, _run(qdq, level, x)):
            np.testing.assert_array_equal(a, b)
    # the FP32 model export writes has the original biases back
    fp32 = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(tmp_path / "deploy" / "model.onnx").graph.initializer}
    orig = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(src).graph.initializer}
    for name in ("B1", "B2"):
        np.testing.assert_array_equal(fp32[name], orig[name])


def test_rounding_follows_the_formula():
    """s_b = float32(s_x * s_w) per output channel; b' = s_b * round_half_even(b / s_b), int32-saturated."""
    from aimetcli.kernels.quant import encoding_from_range, fake_quantize
    from aimetcli.quantsim.bias_grid import bias_grid

    x = encoding_from_range(-1.3, 2.1, 8, False)
    w = encoding_from_range(np.array([-0.5, -2e-3, -1.0]), np.array([0.5, 2e-3, 1.0]), 8, True, axis=0)
    grid = bias_grid(x, w, 3)
    s = np.float32(x.scale) * w.scale.astype(np.float32)
    np.testing.assert_array_equal(grid.scale, s)
    b = np.array([0.3, -7.7, 1e6], np.float32)
    want = np.clip(np.rint(np.divide(b, s, dtype=np.float32)), -(2.0 ** 31), 2.0 ** 31 - 1).astype(np.float32) * s
    np.testing.assert_array_equal(fake_quantize(b, grid), want)
    assert bias_grid(x, w, 4) is None  # per-channel scales of another count: left float
