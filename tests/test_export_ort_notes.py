"""export names the onnxruntime session option a MatMul reading a 16-bit or float activation needs
(targets.onnxruntime_notes), and ptq's judge scores with it (runtime.ADVISED).

onnxruntime's CPU provider fuses a <= 8-bit weight's DequantizeLinear into its MatMul (MatMulNBits)
unless the other input is on an 8-bit grid, and at its default accuracy level that kernel
requantizes the other input to 8 bits: a W8A16 ViT-tiny lost 1.4 dB against its sim that way, and
nothing said so."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from click.testing import CliRunner
from onnx import helper

from aimetcli.cli import main
from aimetcli.runtime import MATMUL_NBITS_OPTION
from helpers import init, make_model, rand

K, N = 64, 32


def _matmul_model():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    return make_model(nodes, [("x", ["batch", 8, K])], [("y", None)], [init("w", rand(K, N))])


def _export(tmp_path, *flags, json_out: list | None = None):
    """export's stderr as one line; with ``json_out``, its --json summary appended there."""
    import json

    import onnx

    onnx.save(_matmul_model(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", rand(16, 8, K))
    runner = CliRunner()
    sim = runner.invoke(main, ["quantsim", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "sim.onnx"), "--data",
                               str(tmp_path / "x.npy"), "--per-channel", *flags])
    assert sim.exit_code == 0, sim.output
    out = runner.invoke(main, ["export", str(tmp_path / "sim.onnx"), "-o", str(tmp_path / "exp"),
                               *(["--json"] if json_out is not None else [])])
    assert out.exit_code == 0, out.output
    if json_out is not None:
        json_out.append(json.loads(out.stdout))
    return " ".join(out.stderr.split())


def test_a16_matmul_gets_the_session_option_and_a8_does_not(tmp_path):
    (tmp_path / "a16").mkdir()
    (tmp_path / "a8").mkdir()
    summaries: list = []
    said = _export(tmp_path / "a16", "--act-bw", "16", json_out=summaries)
    assert f'{MATMUL_NBITS_OPTION}="1"' in said and "1 MatMul(s) read a 16-bit or float activation" in said
    assert MATMUL_NBITS_OPTION not in _export(tmp_path / "a8", json_out=summaries)
    # --json gives a deploy script the session config entries to set (ptq's export row reads the same field)
    assert [s["session_options"] for s in summaries] == [{MATMUL_NBITS_OPTION: "1"}, {}]


def test_the_option_brings_the_deployed_model_back_to_its_sim(tmp_path):
    """The note's claim, in the onnxruntime the tests run: with the option the deployed model
    computes what the sim computes; with the default it is further from it."""
    _export(tmp_path, "--act-bw", "16")
    x = rand(4, 8, K, rng=np.random.default_rng(5))

    def run(path, options=None, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.log_severity_level = 3
        for key, value in (options or {}).items():
            so.add_session_config_entry(key, value)
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    sim = run(tmp_path / "sim.onnx", level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    default = run(tmp_path / "exp" / "model_qdq.onnx")
    float_compute = run(tmp_path / "exp" / "model_qdq.onnx", {MATMUL_NBITS_OPTION: "1"})
    err_default = float(np.abs(default - sim).max())
    err_option = float(np.abs(float_compute - sim).max())
    assert err_option < 1e-3 * float(np.abs(sim).max())
    # the default is further off (0.16 against 0.0 here): if an onnxruntime release stops fusing, the
    # note is stale and this says so
    assert err_option < err_default, (err_option, err_default)


def test_the_grid_is_read_through_data_movement():
    """A MatMul reading a Reshape of a 16-bit tensor reads 16-bit values (12 of ViT-tiny's 48 fused
    MatMuls read theirs so); an 8-bit tensor so reached gets no note."""
    from aimetcli import api
    from aimetcli.kernels.quant import encoding_from_range
    from aimetcli.targets import onnxruntime_notes
    from helpers import to_ir

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["rs"], name="reshape"),
             helper.make_node("MatMul", ["rs", "w"], ["y"], name="fc")]
    proto = make_model(nodes, [("x", [2, 8, K])], [("y", None)],
                       [init("w", rand(K, N)), init("shape", np.array([16, K], np.int64))])
    model, _ = api.prepare(to_ir(proto))
    w8 = {"w": encoding_from_range(-1.0, 1.0, 8, True)}
    assert "1 MatMul(s)" in onnxruntime_notes(model, {"r": encoding_from_range(0.0, 4.0, 16, False)}, w8)[0]
    assert onnxruntime_notes(model, {"r": encoding_from_range(0.0, 4.0, 8, False)}, w8) == []


def _option_changes(path, x) -> bool:
    def run(options):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        for key, value in options.items():
            so.add_session_config_entry(key, value)
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    return not np.array_equal(run({}), run({MATMUL_NBITS_OPTION: "1"}))


def test_the_note_fires_exactly_where_the_option_changes_the_deployed_model(tmp_path):
    """The judge scores every deployed model with the option (runtime.ADVISED); that is what a user
    gets only if export names it wherever it matters: a 16-bit or a float activation (left float by
    --exclude) into an 8-bit or 4-bit weight, unless the MatMul's output is on an 8-bit grid; not an
    8-bit activation, whatever the weight. (onnxruntime 1.32: a float or 16-bit input fuses into
    MatMulNBits unless an 8-bit QuantizeLinear follows the MatMul.)"""
    import onnx

    from aimetcli import api
    from aimetcli.calibration.data import input_specs, open_data
    from aimetcli.options import QuantOptions
    from aimetcli.targets import onnxruntime_notes
    from helpers import to_ir

    model, _ = api.prepare(to_ir(_matmul_model()))
    data = open_data("random:16", input_specs(model))
    x = rand(4, 8, K, rng=np.random.default_rng(5))
    cases = {"a16": QuantOptions(per_channel=True, act_bw=16), "a8": QuantOptions(per_channel=True),
             "w4a8": QuantOptions(per_channel=True, param_bw=4),
             "w4a16": QuantOptions(per_channel=True, param_bw=4, act_bw=16),
             "float input": QuantOptions(per_channel=True, exclude=("x",)),
             "float input, a16": QuantOptions(per_channel=True, act_bw=16, exclude=("x",))}
    seen = {}
    for name, options in cases.items():
        sim, encodings, _ = api.quantsim(api.clone(model), data, options)
        acts, params = encodings.activations, encodings.params
        out = tmp_path / name.replace(" ", "_").replace(",", "")
        api.export(sim, str(out))
        noted = bool(onnxruntime_notes(model, acts, params))
        seen[name] = noted
        assert noted == _option_changes(out / "model_qdq.onnx", x), name
    assert seen == {"a16": True, "a8": False, "w4a8": False, "w4a16": True, "float input": False,
                    "float input, a16": True}
    assert onnx.load(str(tmp_path / "a8" / "model_qdq.onnx")).graph.node  # written and readable


def test_the_judge_scores_a_16_bit_matmul_as_its_sim_with_the_advised_option():
    """ptq's judge runs model_qdq with the option export names (runtime.ADVISED): a W8A16 MatMul
    scores as its sim does; the default session (runtime.DEPLOY) is further off."""
    from aimetcli import api, runtime
    from aimetcli.calibration.data import input_specs, open_data
    from aimetcli.export import deployable_of_sim
    from aimetcli.options import QuantOptions
    from aimetcli.ptq_judge import Judge
    from helpers import to_ir

    model, _ = api.prepare(to_ir(_matmul_model()))
    data = open_data("random:16", input_specs(model))
    sim, _, _ = api.quantsim(api.clone(model), data, QuantOptions(per_channel=True, act_bw=16))
    advised = Judge(model, data, 8).score(sim).sqnr_db
    emulated = Judge(model, data, 8, deployed=False).score(sim).sqnr_db
    default = Judge(model, data, 8).score(deployable_of_sim(sim), optimization="all").sqnr_db
    assert runtime.ADVISED.config == ((MATMUL_NBITS_OPTION, "1"),)
    assert abs(advised - emulated) < 0.01
    assert default < advised - 1.0, (default, advised)


def test_ptq_export_row_names_the_options_its_judge_ran_with(tmp_path):
    """ptq's export row states the session options model_qdq.onnx was scored with, from export's
    summary (not from its warnings' text); --json's export block carries them too."""
    import json

    import onnx

    onnx.save(_matmul_model(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", rand(16, 8, K))
    rows = {}
    for bits in ("16", "8"):
        out = CliRunner().invoke(main, ["ptq", str(tmp_path / "m.onnx"), "-o", str(tmp_path / bits), "--data",
                                        str(tmp_path / "x.npy"), "--act-bw", bits, "--json"])
        assert out.exit_code == 0, out.output
        doc = json.loads(out.stdout)
        rows[bits] = [s["note"] for s in doc["stages"] if s["name"] == "export: model_qdq"]
        assert doc["export"]["session_options"] == ({MATMUL_NBITS_OPTION: "1"} if bits == "16" else {})
    assert rows["16"] == [f"onnxruntime integer kernels, {MATMUL_NBITS_OPTION}=1 (warning below)"]
    assert rows["8"] == ["onnxruntime integer kernels"]


def test_evaluate_advised_runs_model_qdq_as_ptq_scores_it(tmp_path):
    """evaluate --ort-optimization advised is runtime.ADVISED: the W8A16 MatMul's model_qdq.onnx
    then computes what its sim does, where 'all' (the default session) does not."""
    import json

    from aimetcli import runtime
    from aimetcli.commands.quantsim import ORT_LEVELS

    assert ORT_LEVELS == tuple(runtime.JUDGED)
    _export(tmp_path, "--act-bw", "16")
    np.save(tmp_path / "eval.npy", rand(8, 8, K, rng=np.random.default_rng(3)))
    error = {}
    for level in ("all", "advised"):
        out = CliRunner().invoke(main, ["evaluate", str(tmp_path / "sim.onnx"), str(tmp_path / "exp" / "model_qdq.onnx"),
                                        "--data", str(tmp_path / "eval.npy"), "--ort-optimization", f"none,{level}",
                                        "--json"])
        assert out.exit_code == 0, out.output
        error[level] = json.loads(out.stdout)["comparisons"][0]["max_abs_error"]
    assert error["advised"] < 1e-4 < error["all"], error
