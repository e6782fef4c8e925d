"""analyze: a switchable sim equals the sim with every quantizer on and FP32 with none; the
command writes every quantizer's sensitivity and the check of its ranking."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner

from aimetcli import api
from aimetcli import runtime
from aimetcli.calibration.data import input_specs, open_data
from aimetcli.cli import main
from aimetcli.kernels.quant import fake_quantize
from aimetcli.model_ops import clone
from aimetcli.options import QuantOptions
from aimetcli.steps.analyze import analyze_sim as analyze
from aimetcli.steps.analyze import switchable
from helpers import run, to_ir
from test_exclude import _two_layer_model


def test_every_switch_on_is_the_sim_and_every_switch_off_is_fp32():
    proto = _two_layer_model()  # random weights: built once
    model, _ = api.prepare(to_ir(proto))
    data = open_data("random:8", input_specs(model))
    sim, _, _ = api.quantsim(clone(model), data, QuantOptions(param_bw=4, act_bw=4))
    feeds = next(iter(data.batches(8)))
    expected = runtime.Session(sim, runtime.SIMULATE).run(feeds)[0]
    switches = switchable(sim)
    assert {s.kind for s in switches} == {"weight", "activation"} and "y" in {s.tensor for s in switches}
    session = runtime.Session(sim, runtime.SIMULATE)
    on = session.run({**feeds, **{s.input: np.array(True) for s in switches}})[0]
    off = session.run({**feeds, **{s.input: np.array(False) for s in switches}})[0]
    np.testing.assert_array_equal(on, expected)
    np.testing.assert_allclose(off, run(proto, feeds)[0], rtol=1e-5, atol=1e-7)


def test_the_only_and_all_but_sqnrs_bracket_the_full_sim():
    model, _ = api.prepare(to_ir(_two_layer_model()))
    data = open_data("random:8", input_specs(model))
    sim, _, _ = api.quantsim(clone(model), data, QuantOptions(param_bw=3, act_bw=4))
    result = analyze(model, sim, data, batch_size=4)
    assert len(result.quantizers) >= 4 and result.samples == 8
    for q in result.quantizers:  # one quantizer alone never costs more than all of them
        assert q.only_sqnr_db >= result.full_sqnr_db - 1e-6
    assert result.top_float_sqnr_db > result.full_sqnr_db


def test_the_command_writes_every_quantizer_and_the_check(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_two_layer_model(), src)
    r = CliRunner().invoke(main, ["analyze", str(src), "-o", str(tmp_path / "an"), "--data", "random:16",
                                  "--samples", "8", "--param-bw", "4", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "an" / "report.json").read_text())
    assert doc == json.loads(r.stdout)
    assert doc["samples"] == 8 and len(doc["top"]) == 3 and doc["top_float_sqnr_db"] is not None
    assert all({"tensor", "kind", "only_sqnr_db", "all_but_sqnr_db", "recovered_db"} <= set(q) for q in doc["quantizers"])
    assert [row["tensor"] for row in doc["layers"]] == ["c1", "c2"]  # each layer's error in the full sim
    page = (tmp_path / "an" / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and doc["top"][0] in page and "<script" not in page
    r = CliRunner().invoke(main, ["analyze", str(src), "-o", str(tmp_path / "an2"), "--data", "missing.npz"])
    assert r.exit_code == 1 and "missing.npz" in r.stderr and not (tmp_path / "an2").exists()


def test_a_quantizer_switched_off_is_not_computed_and_one_on_alone_is_its_fake_quantization():
    proto = _two_layer_model()
    model, _ = api.prepare(to_ir(proto))
    data = open_data("random:8", input_specs(model))
    sim, encodings, _ = api.quantsim(clone(model), data, QuantOptions(param_bw=4, act_bw=4))
    switches = switchable(sim)
    # every quantizer's chain sits in the then branch of its If: an If runs only the branch taken
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "Where") for n in sim.graph)
    assert sum(n.op_type == "If" for n in sim.graph) == len(switches)
    session = runtime.Session(sim, runtime.SWEEP)
    feeds = next(iter(data.batches(8)))
    only_w1 = session.run({**feeds, **{s.input: np.array(s.tensor == "w1") for s in switches}})[0]
    expected = onnx.ModelProto()
    expected.CopyFrom(proto)
    w1 = next(t for t in expected.graph.initializer if t.name == "w1")
    w1.CopyFrom(onnx.numpy_helper.from_array(fake_quantize(onnx.numpy_helper.to_array(w1), encodings.params["w1"]),
                                             "w1"))
    np.testing.assert_allclose(only_w1, run(expected, feeds)[0], rtol=1e-5, atol=1e-7)
