#!/usr/bin/env python3
"""Build a full-size MobileNetV2 ONNX graph (torchvision layout) without torch.

Needs only onnx and numpy.  The graph matches what
``torch.onnx.export(torchvision.models.mobilenet_v2(), ..., opset_version=13,
do_constant_folding=False)`` gives structurally, with random weights:

* input ``input`` float32 [N, 3, 224, 224] (dynamic batch ``batch``),
  output ``logits`` float32 [N, 1000]
* stem Conv 3x3 s2 -> 32 ch, 17 inverted-residual blocks
  (t, c, n, s) = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1)
  (6,160,3,2) (6,320,1,1), final 1x1 Conv -> 1280, GlobalAveragePool,
  Flatten, Gemm (1280 -> 1000)
* every Conv has no bias and is followed by BatchNormalization (52 in all);
  Clip(min=0, max=6) with min/max as initializer inputs (opset 13) wherever
  torchvision has ReLU6; residual Add where stride is 1 and in == out channels
  (10 Adds)
* about 3.5M parameters (3,504,872 = torchvision's count)

Weights are He-normal (fixed seed), BN statistics randomised (gamma ~ U(0.5,1.5),
beta ~ N(0,0.2), running mean ~ N(0,0.1), running var ~ U(0.5,2)), so that the
outputs are finite and differ between inputs.  The Gemm weight uses std
sqrt(1/fan_in) so logits stay in a moderate range.

Usage::

    python bench/make_mobilenetv2.py [OUT]   # default bench/data/mobilenetv2_full.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
# torchvision inverted_residual_setting: expand ratio t, channels c, repeats n, stride s
SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "mobilenetv2_full.onnx"


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n_params = 0

    def init(self, name: str, arr: np.ndarray, param: bool = True) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        if param:
            self.n_params += arr.size
        return name

    def conv_bn(self, x: str, prefix: str, cin: int, cout: int, k: int, stride: int,
                groups: int = 1, relu6: bool = True) -> str:
        """Conv (no bias) + BatchNormalization [+ Clip(0, 6)], torchvision naming."""
        fan_in = (cin // groups) * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k))
        wname = self.init(f"{prefix}.0.weight", w.astype(np.float32))
        pad = (k - 1) // 2
        conv_out = f"/{prefix.replace('.', '/')}/0/Conv_output_0"
        self.nodes.append(helper.make_node(
            "Conv", [x, wname], [conv_out], name=f"/{prefix.replace('.', '/')}/0/Conv",
            dilations=[1, 1], group=groups, kernel_shape=[k, k],
            pads=[pad, pad, pad, pad], strides=[stride, stride]))
        bn = f"{prefix}.1"
        scale = self.init(f"{bn}.weight", self.rng.uniform(0.5, 1.5, cout).astype(np.float32))
        bias = self.init(f"{bn}.bias", self.rng.normal(0.0, 0.2, cout).astype(np.float32))
        mean = self.init(f"{bn}.running_mean",
                         self.rng.normal(0.0, 0.1, cout).astype(np.float32), param=False)
        var = self.init(f"{bn}.running_var",
                        self.rng.uniform(0.5, 2.0, cout).astype(np.float32), param=False)
        bn_out = f"/{bn.replace('.', '/')}/BatchNormalization_output_0"
        self.nodes.append(helper.make_node(
            "BatchNormalization", [conv_out, scale, bias, mean, var], [bn_out],
            name=f"/{bn.replace('.', '/')}/BatchNormalization",
            epsilon=1e-5, momentum=0.9))
        if not relu6:
            return bn_out
        clip_out = f"/{prefix.replace('.', '/')}/2/Clip_output_0"
        self.nodes.append(helper.make_node(
            "Clip", [bn_out, "clip_min", "clip_max"], [clip_out],
            name=f"/{prefix.replace('.', '/')}/2/Clip"))
        return clip_out


def build(path, seed: int = 0) -> onnx.ModelProto:
    """Build the model, check it, save it to ``path`` and return it."""
    b = _Builder(seed)
    b.init("clip_min", np.array(0.0, dtype=np.float32), param=False)
    b.init("clip_max", np.array(6.0, dtype=np.float32), param=False)

    x = b.conv_bn("input", "features.0", 3, 32, 3, 2)
    cin, idx = 32, 1
    for t, c, n, s in SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            p = f"features.{idx}.conv"
            y, j = x, 0
            if t != 1:
                y = b.conv_bn(y, f"{p}.{j}", cin, hidden, 1, 1)
                j += 1
            y = b.conv_bn(y, f"{p}.{j}", hidden, hidden, 3, stride, groups=hidden)
            j += 1
            # pointwise-linear projection: torchvision names it conv.{j} / conv.{j+1}
            w = b.rng.normal(0.0, np.sqrt(2.0 / hidden), (c, hidden, 1, 1))
            wname = b.init(f"{p}.{j}.weight", w.astype(np.float32))
            conv_out = f"/{p.replace('.', '/')}/{j}/Conv_output_0"
            b.nodes.append(helper.make_node(
                "Conv", [y, wname], [conv_out], name=f"/{p.replace('.', '/')}/{j}/Conv",
                dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0],
                strides=[1, 1]))
            bn = f"{p}.{j + 1}"
            args = [b.init(f"{bn}.weight", b.rng.uniform(0.5, 1.5, c).astype(np.float32)),
                    b.init(f"{bn}.bias", b.rng.normal(0.0, 0.2, c).astype(np.float32)),
                    b.init(f"{bn}.running_mean",
                           b.rng.normal(0.0, 0.1, c).astype(np.float32), param=False),
                    b.init(f"{bn}.running_var",
                           b.rng.uniform(0.5, 2.0, c).astype(np.float32), param=False)]
            y_out = f"/{bn.replace('.', '/')}/BatchNormalization_output_0"
            b.nodes.append(helper.make_node(
                "BatchNormalization", [conv_out, *args], [y_out],
                name=f"/{bn.replace('.', '/')}/BatchNormalization", epsilon=1e-5, momentum=0.9))
            if stride == 1 and cin == c:
                add_out = f"/features/features.{idx}/Add_output_0"
                b.nodes.append(helper.make_node(
                    "Add", [x, y_out], [add_out], name=f"/features/features.{idx}/Add"))
                y_out = add_out
            x, cin, idx = y_out, c, idx + 1
    x = b.conv_bn(x, f"features.{idx}", cin, 1280, 1, 1)

    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["/GlobalAveragePool_output_0"],
                                    name="/GlobalAveragePool"))
    b.nodes.append(helper.make_node("Flatten", ["/GlobalAveragePool_output_0"],
                                    ["/Flatten_output_0"], name="/Flatten", axis=1))
    fc_w = b.init("classifier.1.weight",
                  b.rng.normal(0.0, np.sqrt(1.0 / 1280), (1000, 1280)).astype(np.float32))
    fc_b = b.init("classifier.1.bias", b.rng.normal(0.0, 0.01, 1000).astype(np.float32))
    b.nodes.append(helper.make_node("Gemm", ["/Flatten_output_0", fc_w, fc_b], ["logits"],
                                    name="/classifier/classifier.1/Gemm",
                                    alpha=1.0, beta=1.0, transB=1))

    graph = helper.make_graph(
        b.nodes, "mobilenetv2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="aimetcli-bench", producer_version="1")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return model


def _param_count(model: onnx.ModelProto) -> int:
    """Trainable parameters (excludes BN running stats and the Clip bounds)."""
    skip = ("running_mean", "running_var")
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if not t.name.endswith(skip) and t.name not in ("clip_min", "clip_max"))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else DEFAULT_OUT
    model = build(out, seed=0)
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    print(f"wrote {out} ({out.stat().st_size} bytes), params={_param_count(model)}, ops={ops}")
    try:
        import onnxruntime as ort
    except ImportError:
        return 0
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    (logits,) = sess.run(["logits"], {"input": x})
    print(f"onnxruntime: logits {logits.shape}, finite={bool(np.isfinite(logits).all())}, "
          f"std={logits.std():.3f}, argmax={logits.argmax(1).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
