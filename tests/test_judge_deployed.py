"""ptq's judge scores a sim as deployed: its model_qdq.onnx under onnxruntime's optimizations
(ptq_judge.Judge), or its float emulation for --target htp."""

import numpy as np
import onnxruntime as ort
import pytest

from aimetcli import api, model_io, runtime
from aimetcli.calibration.data import input_specs, open_data
from aimetcli.export import deployable_of_sim
from aimetcli.options import QuantOptions
from aimetcli.ptq_judge import Judge
from onnx import helper

from helpers import init, make_model, rand, to_ir
from test_export import model_proto


def _attention_like():
    """Conv, then the product of its output with its transpose. onnxruntime's integer MatMul of two
    quantized activations rounds otherwise than the float emulation now and then: on the eighth
    weights drawn here the scores differ by 0.0018 dB on an AMD EPYC (on the seven before, not
    at all)."""
    rng = np.random.default_rng(1)
    for _ in range(8):
        inits = [init("W1", rand(16, 3, 3, 3, rng=rng)), init("B1", rand(16, rng=rng))]
    nodes = [helper.make_node("Conv", ["input", "W1", "B1"], ["c1"], pads=[1] * 4),
             helper.make_node("Transpose", ["c1"], ["t"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["c1", "t"], ["y"])]
    return make_model(nodes, [("input", ["N", 3, 8, 8])], [("y", None)], inits)


def _sim_and_data(tmp_path):
    model, _ = api.prepare(to_ir(_attention_like()))
    data = open_data("random:16", input_specs(model))
    sim, _, _ = api.quantsim(api.clone(model), data, QuantOptions(per_channel=True))
    api.export(sim, str(tmp_path / "out"))
    x = np.concatenate([b["input"] for b in data.batches(16)])
    return model, sim, data, x


def _sqnr(ref, got):
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))


def _run(path, x, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_the_judge_scores_a_sim_as_its_model_qdq_runs_in_onnxruntime(tmp_path, monkeypatch):
    model, sim, data, x = _sim_and_data(tmp_path)
    model_io.save_model(model, str(tmp_path / "fp32.onnx"))
    model_io.save_model(sim, str(tmp_path / "sim.onnx"))
    ref = _run(str(tmp_path / "fp32.onnx"), x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    deployed = _run(str(tmp_path / "out" / "model_qdq.onnx"), x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    emulated = _run(str(tmp_path / "sim.onnx"), x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    # (on another CPU the float emulation's sums may round alike: then only the policies tell)
    assert Judge(model, data, 8).score(sim).sqnr_db == pytest.approx(_sqnr(ref, deployed), abs=1e-7)
    assert Judge(model, data, 8, deployed=False).score(sim).sqnr_db == pytest.approx(_sqnr(ref, emulated), abs=1e-7)
    for deployed_, policy in ((True, "deploy-advised"), (False, "simulate")):
        judge = Judge(model, data, 8, deployed=deployed_)
        made = []
        monkeypatch.setattr(runtime.Session, "__init__",
                            lambda self, m, p, _init=runtime.Session.__init__: (made.append(p.name), _init(self, m, p))[1])
        judge.score(sim)
        monkeypatch.undo()
        assert made == [policy]
    # a model that is no sim (no embedded encodings) runs as it is
    assert Judge(model, data, 8).score(model).sqnr_db is not None


@pytest.mark.skipif(not runtime.u8s8_exact(), reason="this CPU's u8s8 kernels may saturate")
def test_int8_weights_compute_model_qdqs_integers_where_u8s8_is_exact(tmp_path):
    """The judge runs int8 weights where the u8s8 kernels are exact: the same outputs, bit for
    bit, as model_qdq's uint8 weights with zero point 128."""
    _, sim, _, x = _sim_and_data(tmp_path)
    outs = []
    for unsigned in (True, False):
        session = runtime.Session(deployable_of_sim(sim, unsigned_weights=unsigned), runtime.DEPLOY)
        outs.append(session.run({"input": x})[0])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_u8s8_is_exact_only_with_vnni_flags(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    for flags, exact in (("fpu avx2 avx512bw", False), ("fpu avx2 avx512_vnni", True), ("fpu avx_vnni", True)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(cpuinfo if p == "/proc/cpuinfo" else p, *a, **k))
        assert runtime.u8s8_exact.__wrapped__() is exact
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: (_ for _ in ()).throw(OSError("no such file")))
    assert runtime.u8s8_exact.__wrapped__() is False


def test_ptq_judges_htp_sims_by_their_float_emulation(tmp_path):
    made = []

    class Recording(Judge):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.deployed)

    model, _ = api.prepare(to_ir(model_proto(np.random.default_rng(0))))
    calib = open_data("random:24", input_specs(model))
    for target, deployed in (("generic", True), ("htp", False)):
        made.clear()
        api.ptq(api.clone(model), calib, None, QuantOptions(target=target), outdir=str(tmp_path / target),
                schemes=api.scheme_candidates(QuantOptions()), judge=Recording)
        assert made and set(made) == {deployed}


@pytest.mark.parametrize("per_channel", [False, True])
def test_ptq_scores_its_sim_as_the_model_qdq_it_writes(tmp_path, monkeypatch, per_channel):
    """The judge deploys ptq's sims from the FP32 model and encodings they came from
    (ptq_judge.SOURCE), never from the sim itself: the exported sim's row and model_qdq's row
    (the file read back, uint8 weights) score alike."""
    from aimetcli import export

    monkeypatch.setattr(export, "deployable_of_sim", lambda *a, **k: pytest.fail("a sim was deployed from itself"))
    model, _ = api.prepare(to_ir(_attention_like()))
    calib = open_data("random:24", input_specs(model))
    opts = QuantOptions(per_channel=per_channel)
    summary = api.ptq(model, calib, None, opts, outdir=str(tmp_path / "out"), schemes=api.scheme_candidates(opts))
    rows = {s.name: s for s in summary.stages}
    assert rows["sim.onnx"].calib_sqnr_db == pytest.approx(rows["export: model_qdq"].calib_sqnr_db, abs=1e-9)
