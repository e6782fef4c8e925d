"""bias-correct: exact empirical means, closed-form analytical means, recorded options."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

from aimetcli import api
from aimetcli import graph as g
from aimetcli.calibration.data import input_specs, open_data
from aimetcli.cli import main
from aimetcli.kernels.bias import clipped_normal_mean
from aimetcli.kernels.quant import fake_quantize
from aimetcli.layers import as_layer, bias_array
from aimetcli.quantsim.placement import QuantOptions
from helpers import bn_inits, bn_node, init, make_model, rand, to_ir

RNG = np.random.default_rng(11)


def single_conv(bias: bool):
    w = (RNG.standard_normal((6, 4, 1, 1)) * np.array([1, 5, 0.2, 2])[None, :, None, None]).astype(np.float32)
    inits = [init("W", w)] + ([init("B", rand(6))] if bias else [])
    nodes = [helper.make_node("Conv", ["x", "W"] + (["B"] if bias else []), ["y"], name="conv")]
    return make_model(nodes, [("x", ["N", 4, 5, 5])], [("y", None)], inits)


def known_inputs(n=256):
    mu = np.array([0.5, -1.0, 2.0, 0.0], np.float32)[None, :, None, None]
    sd = np.array([1.0, 0.3, 2.0, 0.7], np.float32)[None, :, None, None]
    return (RNG.standard_normal((n, 4, 5, 5)).astype(np.float32) * sd + mu).astype(np.float32)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("param_bw", [4, 8])
def test_empirical_makes_quantized_mean_equal_fp32(tmp_path, bias, param_bw):
    proto = single_conv(bias)
    x = known_inputs()
    np.save(tmp_path / "x.npy", x)
    model, _ = api.prepare(to_ir(proto))
    options = QuantOptions(param_bw=param_bw)
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    w = onnx.numpy_helper.to_array(proto.graph.initializer[0]).astype(np.float64)
    b0 = onnx.numpy_helper.to_array(proto.graph.initializer[1]).astype(np.float64) if bias else np.zeros(6)
    summary = api.bias_correct(model, dataset, options, method="empirical", run=api.RunOptions(batch_size=64))
    assert [c.method for c in summary.corrected] == ["empirical"]
    layer = as_layer(next(iter(model.graph)))
    assert layer.bias is not None  # a bias was created where there was none
    b1 = layer.bias.const_value.numpy().astype(np.float64)
    # numpy re-computation with the encodings quantsim uses for these options
    sim, encs, _ = api.quantsim(model, dataset, options, run=api.RunOptions(batch_size=64))
    xq = fake_quantize(x, encs.activations["x"]).astype(np.float64)
    wq = fake_quantize(w.astype(np.float32), encs.params["W"]).astype(np.float64)[:, :, 0, 0]
    fp_mean = np.einsum("oc,nchw->o", w[:, :, 0, 0], x.astype(np.float64)) / (x.shape[0] * 25) + b0
    q_before = np.einsum("oc,nchw->o", wq, xq) / (x.shape[0] * 25) + b0
    q_after = q_before - b0 + b1
    assert np.max(np.abs(q_before - fp_mean)) > 1e-4  # there was a shift to correct
    # a runtime stores the bias as int32 on the grid s = float32(s_x * s_w) (quantsim/bias_grid.py):
    # the corrected bias is the grid point nearest the exact correction, so the shift left is at most s / 2
    step = (np.float32(encs.activations["x"].scale) * encs.params["W"].scale.astype(np.float32)).astype(np.float64)
    on_grid = (np.rint(np.divide(b1.astype(np.float32), step.astype(np.float32), dtype=np.float32))
               * step.astype(np.float32))
    np.testing.assert_array_equal(on_grid, b1.astype(np.float32))
    atol = 1e-5 * max(1.0, np.abs(fp_mean).max())
    assert np.all(np.abs(q_after - fp_mean) <= step / 2 + atol), (q_after - fp_mean, step)


@pytest.mark.parametrize("lo, hi", [(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0), (-1.0, 2.0)])
def test_clipped_normal_mean_matches_numerical_integration(lo, hi):
    beta = np.array([-3.0, -0.5, 0.0, 1.0, 4.0, 7.0])
    gamma = np.array([1.0, 2.0, 0.5, 1.5, 3.0, 1.0])
    got = clipped_normal_mean(beta, gamma, lo, hi)
    for b, s, m in zip(beta, gamma, got):
        z = np.linspace(b - 12 * s, b + 12 * s, 200001)
        pdf = np.exp(-0.5 * ((z - b) / s) ** 2) / (s * np.sqrt(2 * np.pi))
        expect = np.trapezoid(np.clip(z, lo, hi) * pdf, z)
        assert abs(m - expect) < 1e-6, (b, s, m, expect)


def bn_chain():
    inits = [init("W1", rand(8, 3, 3, 3)), init("W2", rand(5, 8, 3, 3)), init("lo", np.array(0, np.float32)),
             init("hi", np.array(6, np.float32))] + bn_inits("bn", 8)
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["y1"], name="c1", pads=[1] * 4),
        bn_node("bn", "y1", "z1"),
        helper.make_node("Clip", ["z1", "lo", "hi"], ["a1"]),
        helper.make_node("Conv", ["a1", "W2"], ["out"], name="c2", pads=[1] * 4),
    ]
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("out", None)], inits)


def test_analytical_uses_carried_bn_stats_after_separate_fold(tmp_path):
    # fold in one command, correct analytically (no data) in another
    src = tmp_path / "m.onnx"
    onnx.save(bn_chain(), src)
    runner = CliRunner()
    r = runner.invoke(main, ["fold-bn", str(src), "-o", str(tmp_path / "f.onnx")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["bias-correct", str(tmp_path / "f.onnx"), "-o", str(tmp_path / "bc.onnx"),
                             "--method", "analytical", "--param-bw", "4", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [c["layer"] for c in doc["corrected"]] == ["c2"]
    assert any(s["layer"] == "c1" and "BN statistics" in s["reason"] for s in doc["skipped"])
    folded = onnx.load(tmp_path / "f.onnx")
    corrected = onnx.load(tmp_path / "bc.onnx")
    from aimetcli.bn_stats import read_bn_stats
    from aimetcli.model_io import load_model

    stats = read_bn_stats(load_model(str(tmp_path / "f.onnx")).model)["z1"]
    ex = clipped_normal_mean(stats.beta, stats.gamma, 0.0, 6.0)
    w2 = next(onnx.numpy_helper.to_array(t) for t in folded.graph.initializer if t.name == "W2")
    # the encoding quantsim would use: symmetric per-tensor 4-bit min-max of W2, on AIMET's grid
    # (the negative side's extra level: the scale depends on which side holds the largest magnitude)
    from aimetcli.kernels.quant import encoding_from_range

    enc = encoding_from_range(float(w2.min()), float(w2.max()), 4, True)
    err = fake_quantize(w2, enc).astype(np.float64) - w2
    expect = -np.einsum("ockl,c->o", err, ex)
    bias = [n for n in corrected.graph.node if n.op_type == "Conv"][1].input
    assert len(bias) == 3
    b = next(onnx.numpy_helper.to_array(t) for t in corrected.graph.initializer if t.name == bias[2])
    np.testing.assert_allclose(b, expect, rtol=1e-5, atol=1e-6)


def test_hybrid_is_analytical_where_stats_allow(tmp_path):
    model, _ = api.prepare(to_ir(bn_chain()))
    api.fold_bn(model)
    summary = api.bias_correct(model, open_data("random:32", input_specs(model)), QuantOptions(), method="hybrid")
    methods = {c.layer: c.method for c in summary.corrected}
    assert methods == {"c1": "empirical", "c2": "analytical"}


def test_shared_weights_get_private_biases():
    w = rand(4, 3, 1, 1)
    inits = [init("W", w)]
    nodes = [helper.make_node("Conv", ["x", "W"], ["a"], name="ca"), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["x", "W"], ["b"], name="cb"), helper.make_node("Add", ["r", "b"], ["out"])]
    proto = make_model(nodes, [("x", ["N", 3, 4, 4])], [("out", None)], inits)
    model, _ = api.prepare(to_ir(proto))
    summary = api.bias_correct(model, open_data("random:16", input_specs(model)), QuantOptions(param_bw=4),
                               method="empirical")
    assert len(summary.corrected) == 2
    convs = [n for n in model.graph if n.op_type == "Conv"]
    assert convs[0].inputs[2] is not convs[1].inputs[2]


def test_quantsim_warns_when_options_differ(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(single_conv(True), src)
    runner = CliRunner()
    r = runner.invoke(main, ["bias-correct", str(src), "-o", str(tmp_path / "bc.onnx"), "--data", "random:16",
                             "--param-bw", "6"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["quantsim", str(tmp_path / "bc.onnx"), "-o", str(tmp_path / "sim.onnx"), "--data",
                             "random:16"])
    assert r.exit_code == 0
    assert "corrected for other quantization options" in r.stderr and "param_bw 6 -> 8" in r.stderr
    r = runner.invoke(main, ["quantsim", str(tmp_path / "bc.onnx"), "-o", str(tmp_path / "sim6.onnx"), "--data",
                             "random:16", "--param-bw", "6"])
    assert "corrected for other" not in r.stderr


def test_empirical_without_data_is_usage_error(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(single_conv(True), src)
    r = CliRunner().invoke(main, ["bias-correct", str(src), "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code == 2 and "needs --data" in r.stderr


# --------------------------------------------------------------- the one-run correction
def small_net(rng):
    """Conv-Relu, 1x1 Conv (no activation) into a residual Add, Conv, pooling and a Gemm head."""
    def w(*shape, spread=True):
        a = rng.standard_normal(shape).astype(np.float32) * 0.4
        if spread:  # channels with very different ranges: per-tensor weight grids shift them
            a *= rng.uniform(0.1, 3.0, (shape[0],) + (1,) * (len(shape) - 1)).astype(np.float32)
        return a
    # every draw from ``rng``: helpers' shared RNG made the biases depend on which tests ran before
    # (test_given_activation_grids_replace_the_calibration failed after some selections)
    inits = [init("W1", w(8, 3, 3, 3)), init("B1", rand(8, scale=0.2, rng=rng)), init("W2", w(8, 8, 1, 1)),
             init("W3", w(4, 8, 3, 3)), init("B3", rand(4, scale=0.1, rng=rng)), init("W4", w(5, 4)),
             init("B4", rand(5, rng=rng))]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2"], ["c2"]),
        helper.make_node("Add", ["c2", "r1"], ["a"]),
        helper.make_node("Conv", ["a", "W3", "B3"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "W4", "B4"], ["y"], transB=1),
    ]
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", None)], inits)


def _shift_after(tmp_path, options, *, batch_size=64):
    from helpers import output_shift

    rng = np.random.default_rng(5)
    proto = small_net(rng)
    np.save(tmp_path / "x.npy", (rng.standard_normal((64, 3, 8, 8)) + 0.3).astype(np.float32))
    model, _ = api.prepare(to_ir(proto))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    corrected = api.clone(model)
    summary = api.bias_correct(corrected, dataset, options, method="empirical",
                               run=api.RunOptions(batch_size=batch_size))
    assert len(summary.corrected) == 4
    plain, _, _ = api.quantsim(api.clone(model), dataset, options, run=api.RunOptions(batch_size=batch_size))
    fixed, _, _ = api.quantsim(api.clone(corrected), dataset, options, run=api.RunOptions(batch_size=batch_size))
    before = output_shift(model, plain, dataset, batch_size=batch_size)
    after = output_shift(model, fixed, dataset, batch_size=batch_size)
    return before, after, fixed


def bias_half_steps(sim) -> dict[str, float]:
    """Per layer output of ``sim`` whose bias quantsim rounds to a runtime's int32 grid
    (quantsim/bias_grid.py): the mean over channels of half that grid's step."""
    from aimetcli.graph import ROLE_KEY
    from aimetcli.quantsim.bias_grid import ROLE

    out = {}
    for node in sim.graph:
        if node.op_type == "Div" and node.metadata_props.get(ROLE_KEY) == ROLE:
            mul = node
            while mul.op_type != "Mul":  # Div -> Round -> Clip -> Mul
                mul = next(iter(mul.outputs[0].uses())).node
            layer = next(iter(mul.outputs[0].uses())).node
            out[layer.outputs[0].name] = 0.5 * float(np.mean(node.inputs[1].const_value.numpy()))
    return out


@pytest.mark.parametrize("opts", [dict(param_bw=4), dict(param_bw=4, act_bw=4), dict(param_bw=6, act_bw=6,
                                                                                   act_symmetric=True)])
def test_one_run_leaves_no_shift_after_quantsim_recalibrates(tmp_path, opts):
    """Grids computed in the correction run are the ones quantsim computes on the corrected model,
    so the corrected model quantized by quantsim has (to float rounding) no mean shift left but
    what its biases' int32 grid leaves: a corrected bias a runtime stores on the grid
    s_input * s_weight moves by at most half a step of it, and the run rounds it as quantsim
    will, so every layer after it corrects for that too (quantsim/bias_grid.py)."""
    before, after, fixed = _shift_after(tmp_path, QuantOptions(**opts))
    half = bias_half_steps(fixed)
    assert bool(half) == (opts.get("act_bw", 8) == 8)  # narrow input grids (a Clip) keep float biases
    for layer in before:
        assert before[layer] > 1e-3, (layer, before[layer])
        assert after[layer] <= 1e-3 * before[layer] + half.get(layer, 0.0) + 1e-6, (layer, before[layer], after[layer])


@pytest.mark.parametrize("how", ["tf-enhanced", "several runs"])
def test_precomputed_grids_still_remove_most_shift(tmp_path, monkeypatch, how):
    """Where grids cannot be computed in the run (other schemes, data over one run), quantsim's
    calibration computes them first, as AIMET does; quantsim's recalibration brings a little back."""
    from aimetcli import runtime
    from aimetcli.kernels.quant import QuantScheme

    options = QuantOptions(param_bw=4)
    if how == "tf-enhanced":
        options = QuantOptions(param_bw=4, scheme=QuantScheme.TF_ENHANCED)
    else:
        monkeypatch.setattr(runtime, "CHUNK_BYTES", 16 * 3 * 8 * 8 * 4)  # 16 samples a run
    before, after, _ = _shift_after(tmp_path, options, batch_size=16)
    assert np.mean(list(after.values())) * 5 <= np.mean(list(before.values()))


@pytest.mark.parametrize("bw, symmetric", [(8, False), (4, False), (16, False), (8, True), (6, True)])
@pytest.mark.parametrize("lo, hi", [(-1.5, 2.0), (0.5, 3.0), (-4.0, -0.25), (0.0, 0.001), (-1e-3, 2e-3),
                                    (-0.3, 1e4)])
def test_grid_in_graph_equals_encoding_from_range(bw, symmetric, lo, hi):
    """The grid nodes compute exactly AIMET's encoding (kernels/quant.py) of the tensor's range."""
    from aimetcli.correction_graph import Grid, _Builder
    from aimetcli.kernels.quant import encoding_from_range
    from aimetcli.quantsim.insert import ActivationConstants

    x = np.linspace(lo, hi, 37, dtype=np.float32).reshape(1, 37)
    # quantsim's calibration sees the float32 extremes, as the graph does
    enc = encoding_from_range(float(x.min()), float(x.max()), bw, symmetric)
    dtype = enc.container_dtype
    grid = Grid("x", ActivationConstants("scale", "zp", "cmin", "cmax"), enc.num_steps, symmetric,
                non_negative=lo >= 0, rank=2, zero_point_type=helper.np_dtype_to_tensor_dtype(dtype),
                qmin=enc.qmin, qmax=enc.qmax)
    opset = 21 if bw > 8 else 13
    model = to_ir(make_model([], [("x", [1, 37])], [], [], opset=opset))
    b = _Builder(model, {"x"})
    b.grid(model.graph.inputs[0], grid)
    b.place_after(None)
    outs = ["scale", "cmin", "cmax"] + ([] if symmetric else ["zp"])
    for name in outs:
        value = b.values[name]
        value.type = ir.TensorType(ir.DataType(grid.zero_point_type if name == "zp" else onnx.TensorProto.FLOAT))
        model.graph.outputs.append(value)
    sess = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(outs, sess.run(outs, {"x": x})))
    assert got["scale"] == enc.scale.reshape(())
    lo_b, hi_b = enc.dequantized_bounds()
    assert got["cmin"] == lo_b.reshape(()) and got["cmax"] == hi_b.reshape(())
    if not symmetric:
        assert got["zp"].dtype == dtype and int(got["zp"]) == int(enc.zero_point.reshape(()))


@pytest.mark.parametrize("scheme", ["min-max", "tf-enhanced"])
def test_progress_steps_match_callbacks(tmp_path, scheme):
    from aimetcli.bias_correction import progress_steps
    from aimetcli.kernels.quant import QuantScheme

    rng = np.random.default_rng(2)
    np.save(tmp_path / "x.npy", rng.standard_normal((40, 3, 8, 8)).astype(np.float32))
    model, _ = api.prepare(to_ir(small_net(rng)))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    options = QuantOptions(scheme=QuantScheme(scheme))
    steps = []
    api.bias_correct(model, dataset, options, method="empirical",
                     run=api.RunOptions(batch_size=16, progress=steps.append))
    assert sum(steps) == progress_steps(model, dataset, 16, options) > 0


def test_progress_says_which_step_runs(tmp_path):
    """The correction run is one onnxruntime run counted as one step when it ends, so a bar sat at
    n-1/n without a word (issue 16 point 5): a display with ``describe`` is told each step first."""
    rng = np.random.default_rng(2)
    np.save(tmp_path / "x.npy", rng.standard_normal((40, 3, 8, 8)).astype(np.float32))
    model, _ = api.prepare(to_ir(small_net(rng)))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    events = []

    class Display:
        def __call__(self, n=1):
            events.append(n)

        def describe(self, text):
            events.append(text)

    api.bias_correct(model, dataset, QuantOptions(), method="empirical",
                     run=api.RunOptions(batch_size=16, progress=Display()))
    said = [e for e in events if isinstance(e, str)]
    assert said[:2] == ["Correcting biases: preparing the sim", "Correcting biases: FP32 means"]
    assert said[2].startswith("Correcting biases: the correction run (40 samples a run")
    assert events[-2:] == [said[2], 1]  # the run's one step comes after it is named


def test_fixed_batch_model_corrects_over_several_runs(tmp_path):
    """A model with a fixed batch dimension cannot see all the data in one run: the grids are
    calibrated first and the runs' corrections averaged; the shift still drops."""
    from aimetcli.bias_correction import progress_steps
    from helpers import output_shift

    rng = np.random.default_rng(5)
    proto = small_net(rng)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8  # fixed batch of 8
    np.save(tmp_path / "x.npy", (rng.standard_normal((64, 3, 8, 8)) + 0.3).astype(np.float32))
    model, _ = api.prepare(to_ir(proto))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    options = QuantOptions(param_bw=4)
    corrected = api.clone(model)
    steps = []
    summary = api.bias_correct(corrected, dataset, options, method="empirical",
                               run=api.RunOptions(batch_size=64, progress=steps.append))
    assert summary.runs == 8 and not summary.grids_in_run
    assert sum(steps) == progress_steps(model, dataset, 64, options)
    plain, _, _ = api.quantsim(api.clone(model), dataset, options, run=api.RunOptions(batch_size=64))
    fixed, _, _ = api.quantsim(api.clone(corrected), dataset, options, run=api.RunOptions(batch_size=64))
    before = np.mean(list(output_shift(model, plain, dataset, batch_size=64).values()))
    after = np.mean(list(output_shift(model, fixed, dataset, batch_size=64).values()))
    assert after * 5 <= before, (before, after)


def test_runs_over_different_data_each_compare_with_their_own_fp32_means(tmp_path, monkeypatch):
    """With more data than one run takes, each run is a correction of its own samples (its sim
    against the FP32 model on the same samples) and the runs' corrections are averaged. So two runs
    over data A then B give the mean of the corrections of A alone and of B alone. (Against FP32
    means over all the data, each run's sim would instead be pushed by its own deviation from
    them, here a large one, and the layers downstream corrected for that.) Weights at 4 bits set
    the shifts; 16-bit activations keep the activation grids, which A, B and A+B calibrate
    differently, out of the comparison, and the Conv before the pooling and the pooling stay float:
    with more than one run the grids are calibrated before any correction, and the corrected
    outputs of that Conv leave them (clipped) on these shifted halves."""
    from aimetcli import runtime

    rng = np.random.default_rng(11)
    proto = small_net(rng)
    x = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    x[:32] += 1.5
    x[32:] -= 1.5
    for name, part in (("a", x[:32]), ("b", x[32:]), ("ab", x)):
        np.save(tmp_path / f"{name}.npy", part)
    model, _ = api.prepare(to_ir(proto))
    options = QuantOptions(param_bw=4, act_bw=16, exclude=("c3", "p"))
    monkeypatch.setattr(runtime, "CHUNK_BYTES", 32 * 3 * 8 * 8 * 4)  # 32 samples a run

    def biases(m) -> dict[str, np.ndarray]:
        return {la.name: bias_array(la, la.weight_array()) for n in m.graph if (la := as_layer(n)) is not None}

    original = biases(model)

    def deltas(data: str, runs: int) -> np.ndarray:
        m = api.clone(model)
        dataset = open_data(str(tmp_path / f"{data}.npy"), input_specs(m))
        summary = api.bias_correct(m, dataset, options, method="empirical", run=api.RunOptions(batch_size=8))
        assert summary.runs == runs
        return np.concatenate([b - original[name] for name, b in biases(m).items()])

    a, b, ab = deltas("a", 1), deltas("b", 1), deltas("ab", 2)
    assert np.abs(a - b).max() > 0.1  # the halves need different corrections
    np.testing.assert_allclose(ab, (a + b) / 2, rtol=0, atol=1e-3 * np.abs(a + b).max())


def test_runs_are_bounded_by_the_activations_of_the_samples(tmp_path, monkeypatch):
    """Small inputs can have large activations: a run holds only as many samples as fit the
    activation budget (from the model's shapes), so more samples take more runs, each corrected
    on its own samples, and the progress steps still match."""
    from aimetcli import runtime
    from aimetcli.bias_correction import progress_steps

    rng = np.random.default_rng(4)
    np.save(tmp_path / "x.npy", rng.standard_normal((48, 3, 8, 8)).astype(np.float32))
    model, _ = api.prepare(to_ir(small_net(rng)))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    per_sample = g.activation_bytes(model)
    assert isinstance(per_sample, int) and per_sample > 3 * 8 * 8 * 4  # activations outgrow the input
    monkeypatch.setattr(runtime, "ACTIVATION_BUDGET", per_sample * 16)  # 16 samples a run
    steps = []
    summary = api.bias_correct(model, dataset, QuantOptions(), method="empirical",
                               run=api.RunOptions(batch_size=8, progress=steps.append))
    assert summary.runs == 3 and not summary.grids_in_run
    assert sum(steps) == progress_steps(model, dataset, 8, QuantOptions())


def test_nothing_to_correct_says_why(tmp_path):
    """A model whose layers are all skipped (3-D MatMul inputs) gets a warning with the reason,
    and no table of nothing or 'nan -> nan'."""
    rng = np.random.default_rng(2)
    inits = [init("W1", rand(16, 8)), init("B1", rand(8)), init("W2", rand(8, 4))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"]), helper.make_node("Add", ["m1", "B1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]), helper.make_node("MatMul", ["r1", "W2"], ["y"])]
    src = tmp_path / "mlp.onnx"
    onnx.save(make_model(nodes, [("x", ["N", 10, 16])], [("y", ["N", 10, 4])], inits), src)
    np.save(tmp_path / "x.npy", rng.standard_normal((8, 10, 16)).astype(np.float32))
    r = CliRunner().invoke(main, ["bias-correct", str(src), "-o", str(tmp_path / "b.onnx"), "--data",
                                  str(tmp_path / "x.npy")])
    assert r.exit_code == 0, r.output
    assert "Corrected 0 layers" in r.output and "nan" not in r.output
    assert "no layer corrected: 2 skipped (MatMul without a bias input whose input is not known to be 2-D" in r.stderr


def test_given_activation_grids_replace_the_calibration(tmp_path, monkeypatch):
    """``activation_grids`` (ptq's incumbent sim's) stand in for calibrating the sim before
    correcting: the grids quantsim computes on the same data give the same biases without the
    calibration run; other grids give other biases; grids that miss a quantizer are not used."""
    from aimetcli import runtime
    from aimetcli.kernels.quant import QuantScheme

    rng = np.random.default_rng(5)
    model, _ = api.prepare(to_ir(small_net(rng)))
    np.save(tmp_path / "x.npy", (rng.standard_normal((64, 3, 8, 8)) + 0.3).astype(np.float32))
    dataset = open_data(str(tmp_path / "x.npy"), input_specs(model))
    options = QuantOptions(param_bw=4, scheme=QuantScheme.TF_ENHANCED)
    _, enc, _ = api.quantsim(api.clone(model), dataset, options)
    _, minmax, _ = api.quantsim(api.clone(model), dataset, QuantOptions(param_bw=4))
    measured = []
    made = runtime.Session.__init__

    def init(self, m, policy):
        made(self, m, policy)
        measured.append(policy.name == "measure")

    monkeypatch.setattr(runtime.Session, "__init__", init)

    def biases(grids):
        measured.clear()
        corrected = api.clone(model)
        api.bias_correct(corrected, dataset, options, method="empirical", activation_grids=grids)
        inits = corrected.graph.initializers
        return [inits[n].const_value.numpy().copy() for n in sorted(inits) if "B" in n or "bias" in n], sum(measured)

    calibrated, runs = biases(None)
    given, given_runs = biases(dict(enc.activations))
    assert given_runs == 1 < runs  # the FP32 means' session only
    for a, b in zip(calibrated, given, strict=True):
        np.testing.assert_array_equal(a, b)
    other, _ = biases(dict(minmax.activations))
    assert any(not np.array_equal(a, b) for a, b in zip(calibrated, other, strict=True))
    partial = dict(enc.activations)
    partial.pop(sorted(partial)[0])
    again, again_runs = biases(partial)
    assert again_runs == runs
    for a, b in zip(calibrated, again, strict=True):
        np.testing.assert_array_equal(a, b)
