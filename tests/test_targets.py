"""--target: the bitwidths and grids a runtime cannot run are refused before a sim is built
(usage, exit 2) and before one is exported (exit 1, nothing written); what it runs goes through."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from aimetcli import targets
from aimetcli.cli import main
from aimetcli.commands._options import TARGET_NAMES
from helpers import session
from test_exclude import _two_layer_model


@pytest.fixture
def model(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_two_layer_model(), src)
    return str(src)


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_the_cli_offers_the_table_s_targets():
    assert TARGET_NAMES == targets.NAMES


@pytest.mark.parametrize("extra, says", [
    (["--param-bw", "4", "--act-bw", "4"], ["W4A4", "--param-bw 4 --act-bw 4", "W8A16", "4-bit activations"]),
    (["--bits", "head/conv=w16"], ["W16A8", "head/conv", "--bits head/conv=w16"]),
    # stem/conv's output grid is its Relu's (a supergroup): the rule on the Relu sets the pair
    (["--bits", "stem/relu=a4"], ["W8A4", "stem/conv", "--bits stem/relu=a4"]),
    (["--per-channel", "--param-asymmetric"], ["per-channel weights must be symmetric"]),
])
def test_quantsim_refuses_what_htp_cannot_run(tmp_path, model, extra, says):
    out = tmp_path / "sim.onnx"
    r = _invoke("quantsim", model, "-o", str(out), "--data", "random:4", "--target", "htp", *extra)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert all(s in r.stderr for s in says), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_analyze_and_ptq_refuse_before_any_run(tmp_path, model):
    r = _invoke("analyze", model, "-o", str(tmp_path / "an"), "--data", "random:4", "--target", "onnxruntime",
                "--act-bw", "6")
    assert r.exit_code == 2 and "6-bit activations" in r.stderr and not (tmp_path / "an").exists()
    r = _invoke("ptq", model, "-o", str(tmp_path / "ptq"), "--data", "random:4", "--target", "htp",
                "--param-bw", "16")
    assert r.exit_code == 2 and "W16A8" in r.stderr and not (tmp_path / "ptq").exists()


def test_export_refuses_a_sim_the_target_cannot_run(tmp_path, model):
    sim = tmp_path / "sim.onnx"
    assert _invoke("quantsim", model, "-o", str(sim), "--data", "random:4", "--act-bw", "6").exit_code == 0
    before = sim.read_bytes()
    for target in ("htp", "onnxruntime"):
        r = _invoke("export", str(sim), "-o", str(tmp_path / "deploy"), "--target", target)
        assert r.exit_code == 1 and "W8A6" in r.stderr and "nothing written" in r.stderr, r.output
        assert not (tmp_path / "deploy").exists() and sim.read_bytes() == before
    assert _invoke("export", str(sim), "-o", str(tmp_path / "deploy"), "--target", "generic").exit_code == 0


def test_a_mixed_htp_sim_is_built_exported_and_runs(tmp_path, model):
    sim, deploy = tmp_path / "sim.onnx", tmp_path / "deploy"
    r = _invoke("quantsim", model, "-o", str(sim), "--data", "random:4", "--target", "htp", "--act-bw", "16",
                "--bits", "stem/conv=w4", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["options"]["target"] == "htp"
    r = _invoke("export", str(sim), "-o", str(deploy), "--target", "htp")
    assert r.exit_code == 0, r.output
    enc = json.loads((deploy / "model.encodings").read_text())
    bits = {e["name"]: e["bw"] for e in enc["param_encodings"] + enc["activation_encodings"]}
    assert bits["w1"] == 4 and bits["w2"] == 8 and bits["r1"] == 16 and bits["x"] == 16
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    y = session(str(deploy / "model_qdq.onnx")).run(None, {"x": x})[0]
    assert y.shape == (2, 4, 6, 6) and np.all(np.isfinite(y))


def test_ptq_says_which_target_it_built_for(tmp_path, model):
    r = _invoke("ptq", model, "-o", str(tmp_path / "ptq"), "--data", "random:8", "--target", "htp", "--act-bw", "16",
                "--quant-scheme", "min-max", "--no-equalize", "--no-bias-correct")
    assert r.exit_code == 0, r.output
    assert "for htp (exported)" in r.stderr
    doc = json.loads((tmp_path / "ptq" / "report.json").read_text())
    assert doc["options"]["target"] == "htp" and doc["options"]["act_bw"] == 16


def test_a_target_changes_no_grid_so_bias_correction_still_fits(tmp_path, model):
    corrected = tmp_path / "bc.onnx"
    assert _invoke("bias-correct", model, "-o", str(corrected), "--data", "random:4").exit_code == 0
    r = _invoke("quantsim", str(corrected), "-o", str(tmp_path / "sim.onnx"), "--data", "random:4", "--target", "htp")
    assert r.exit_code == 0 and "corrected for other" not in r.stderr, r.output
