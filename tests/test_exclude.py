"""--exclude: node names, globs, op types and tensor names kept float, in every quantizing command."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import helper

from aimetcli.cli import main
from helpers import init, make_model, rand


def _two_layer_model() -> onnx.ModelProto:
    """x -> Conv (stem/conv) -> Relu -> Conv (head/conv) -> Softmax(axis 1) -> y."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="stem/conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="stem/relu"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="head/conv"),
             helper.make_node("Softmax", ["c2"], ["y"], name="head/softmax", axis=1)]
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])],
                      [init("w1", rand(8, 3, 3, 3)), init("w2", rand(4, 8, 1, 1))])


def _quantsim(tmp_path, *exclude: str):
    src = tmp_path / "m.onnx"
    onnx.save(_two_layer_model(), src)
    np.save(tmp_path / "x.npy", rand(8, 3, 6, 6))
    args = ["quantsim", str(src), "-o", str(tmp_path / "sim.onnx"), "--data", str(tmp_path / "x.npy"), "--json"]
    for pattern in exclude:
        args += ["--exclude", pattern]
    return CliRunner().invoke(main, args)


def _quantized(tmp_path) -> set[str]:
    """Tensors with a QuantizeLinear in the sim."""
    sim = onnx.load(tmp_path / "sim.onnx")
    return {n.input[0] for n in sim.graph.node if n.op_type == "QuantizeLinear"}


def test_without_exclude_every_layer_is_quantized(tmp_path):
    r = _quantsim(tmp_path)
    assert r.exit_code == 0, r.output
    assert {"w1", "w2", "x", "r1"} <= _quantized(tmp_path)


def test_a_glob_on_node_names_keeps_those_layers_weights_and_outputs_float(tmp_path):
    r = _quantsim(tmp_path, "head/*")
    assert r.exit_code == 0, r.output
    q = _quantized(tmp_path)
    assert "w2" not in q and not any(t.startswith("c2") or t.startswith("y") for t in q)
    assert {"w1", "x", "r1"} <= q  # the excluded layer's input keeps its producer's grid
    doc = json.loads(r.stdout)
    assert doc["options"]["exclude"] == ["head/*"]


def test_an_op_type_and_a_tensor_name(tmp_path):
    r = _quantsim(tmp_path, "Softmax", "r1")
    assert r.exit_code == 0, r.output
    q = _quantized(tmp_path)
    assert "r1" not in q and not any(t.startswith("y") for t in q) and {"w1", "w2"} <= q


def test_a_pattern_that_matches_nothing_is_one_line_before_any_work(tmp_path):
    r = _quantsim(tmp_path, "hed/*")
    assert r.exit_code == 2
    assert "--exclude 'hed/*' matches no node" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "sim.onnx").exists()


def test_ptq_refuses_an_unmatched_pattern_before_its_fp32_run(tmp_path, monkeypatch):
    from aimetcli import ptq_judge

    src = tmp_path / "m.onnx"
    onnx.save(_two_layer_model(), src)
    monkeypatch.setattr(ptq_judge, "model_outputs", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(tmp_path / "out"), "--data", "random:8",
                                  "--exclude", "nothing"])
    assert r.exit_code == 2 and "matches no node" in r.stderr
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(tmp_path / "out"), "--data", "random:8",
                                  "--bits", "nothing=a16"])
    assert r.exit_code == 2 and "--bits 'nothing' matches no node" in r.stderr


def test_bits_rules_give_layers_and_tensors_their_own_bitwidths_and_the_models_run(tmp_path):
    """--bits: 'head/*=a16' makes the head's outputs 16-bit (uint16 QDQ, opset 21), 'Conv=w4' every
    conv weight 4-bit; later rules win; the sim and the exported model_qdq.onnx run in onnxruntime,
    and the encodings give each tensor its bitwidth."""
    import onnxruntime as ort

    src = tmp_path / "m.onnx"
    onnx.save(_two_layer_model(), src)
    np.save(tmp_path / "x.npy", rand(8, 3, 6, 6))
    r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(tmp_path / "sim.onnx"), "--data",
                                  str(tmp_path / "x.npy"), "--bits", "head/*=a16", "--bits", "Conv=w4",
                                  "--bits", "w2=w6", "--json"])
    assert r.exit_code == 0, r.output
    enc = json.loads((tmp_path / "sim.encodings").read_text())
    acts = {e["name"]: e["bw"] for e in enc["activation_encodings"]}
    params = {e["name"]: e["bw"] for e in enc["param_encodings"]}
    assert params == {"w1": 4, "w2": 6}
    assert acts["c2"] == 16 and acts["y"] == 16 and acts["r1"] == 8 and acts["x"] == 8
    sim = onnx.load(tmp_path / "sim.onnx")
    assert max(o.version for o in sim.opset_import if o.domain in ("", "ai.onnx")) >= 21
    feeds = {"x": rand(2, 3, 6, 6)}
    ort.InferenceSession(str(tmp_path / "sim.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    r = CliRunner().invoke(main, ["export", str(tmp_path / "sim.onnx"), "-o", str(tmp_path / "deploy")])
    assert r.exit_code == 0, r.output
    out = ort.InferenceSession(str(tmp_path / "deploy" / "model_qdq.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert out.shape == (2, 4, 6, 6)
    for bad in ("head/*=x16", "head/*=w17", "=w8"):
        r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(tmp_path / "bad.onnx"), "--data", "random:4",
                                      "--bits", bad])
        assert r.exit_code == 2 and "--bits" in r.stderr and not (tmp_path / "bad.onnx").exists()


def test_mixed_bitwidths_are_read_back_from_both_encodings_versions(tmp_path):
    """A W4/W8 and A8/A16 sim exported as encodings 1.0.0 and 2.0.0: both files load with aimetcli's
    own reader and give each tensor the bitwidth the sim has (2.0.0 carries it as the output dtype)."""
    from aimetcli.encodings import loads

    src = tmp_path / "m.onnx"
    onnx.save(_two_layer_model(), src)
    np.save(tmp_path / "x.npy", rand(8, 3, 6, 6))
    r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(tmp_path / "sim.onnx"), "--data",
                                  str(tmp_path / "x.npy"), "--bits", "head/*=a16", "--bits", "w1=w4", "-q"])
    assert r.exit_code == 0, r.output
    expected = {"w1": 4, "w2": 8, "c2": 16, "y": 16, "r1": 8, "x": 8}
    for version in ("1.0.0", "2.0.0"):
        out = tmp_path / f"deploy-{version}"
        r = CliRunner().invoke(main, ["export", str(tmp_path / "sim.onnx"), "-o", str(out), "--encoding-version",
                                      version, "-q"])
        assert r.exit_code == 0, r.output
        got = loads((out / "model.encodings").read_text())
        assert got.version == version
        bits = {e.name: e.encoding.bitwidth for e in got.encodings}
        assert {k: bits.get(k) for k in expected} == expected, version
