"""BN statistics: in the in-memory model while passes run, written into metadata_props once at save,
read back from files in the saved format (base64 float64, or plain JSON lists)."""

from __future__ import annotations

import base64
import json

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from aimetcli import api, bn_stats, model_io, model_ops
from aimetcli.bn_stats import METADATA_KEY, BnStats, read_bn_stats, write_bn_stats
from helpers import init, make_model, to_ir

RNG = np.random.default_rng(23)
C = 6


def high_bias_chain() -> onnx.ModelProto:
    """Conv -> BN (betas 2..4, gammas 0.01) -> Relu -> Conv: folding keeps statistics, cross-layer
    scaling rescales them, high-bias absorption moves their betas, analytical bias correction reads
    them."""
    inits = [init("W1", (RNG.standard_normal((C, 3, 3, 3)) * 0.05).astype(np.float32)),
             init("bn_g", np.full(C, 0.01, np.float32)), init("bn_b", RNG.uniform(2, 4, C).astype(np.float32)),
             init("bn_m", np.zeros(C, np.float32)), init("bn_v", np.ones(C, np.float32)),
             init("W2", RNG.standard_normal((4, C, 1, 1)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["y1"], name="c1", pads=[1] * 4),
             helper.make_node("BatchNormalization", ["y1", "bn_g", "bn_b", "bn_m", "bn_v"], ["z1"], name="bn"),
             helper.make_node("Relu", ["z1"], ["a1"]),
             helper.make_node("Conv", ["a1", "W2"], ["out"], name="c2")]
    return make_model(nodes, [("x", [2, 3, 6, 6])], [("out", None)], inits)


def saved_layers(path) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """The statistics in a saved file, decoded here from the documented format."""
    text = {p.key: p.value for p in onnx.load(str(path)).metadata_props}[METADATA_KEY]
    doc = json.loads(text)
    assert doc["version"] == 1
    return {name: (np.frombuffer(base64.b64decode(e["beta"]), "<f8"), np.frombuffer(base64.b64decode(e["gamma"]), "<f8"),
                   e["bn"]) for name, e in doc["layers"].items()}


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def test_fold_equalize_bias_correct_chain_writes_stats_once(tmp_path, monkeypatch):
    serialize, parse = Counting(bn_stats._serialize), Counting(bn_stats._parse)
    monkeypatch.setattr(bn_stats, "_serialize", serialize)
    monkeypatch.setattr(bn_stats, "_parse", parse)
    model, _ = api.prepare(to_ir(high_bias_chain()))
    api.fold_bn(model)
    folded = read_bn_stats(model)["z1"]
    summary = api.equalize(model)
    assert [a.layer for a in summary.bias_absorbed] == ["c1"]
    corrected = api.bias_correct(model, None, api.QuantOptions(param_bw=4), method="analytical")
    assert [c.layer for c in corrected.corrected] == ["c2"]
    # the passes changed the statistics in memory only: nothing encoded, nothing parsed back
    assert (serialize.calls, parse.calls) == (0, 0)
    assert model.metadata_props[METADATA_KEY] == ""
    st = read_bn_stats(model)["z1"]
    assert not np.array_equal(st.gamma, folded.gamma)  # cross-layer scaling rescaled them
    np.testing.assert_allclose(st.beta - 3 * np.abs(st.gamma), 0.0, atol=1e-9)  # absorbed up to 3 sigma
    path = tmp_path / "m.onnx"
    api.save(model, str(path))
    assert serialize.calls == 1
    beta, gamma, bn = saved_layers(path)["z1"]
    np.testing.assert_array_equal(beta, st.beta)
    np.testing.assert_array_equal(gamma, st.gamma)
    assert bn == "bn"
    api.save(model, str(tmp_path / "again.onnx"))  # unchanged since: not encoded again
    assert serialize.calls == 1
    assert (tmp_path / "again.onnx").read_bytes() == path.read_bytes()


def test_save_load_round_trip_and_unchanged_entry_kept_verbatim(tmp_path):
    model, _ = api.prepare(to_ir(high_bias_chain()))
    stats = {"z1": BnStats(np.array([1.0, -2.5, 1e-300]), np.array([0.1, 3.0, -1.0]), "bn"),
             "y9": BnStats(np.array([np.pi]), np.array([np.e]), "")}
    write_bn_stats(model, stats)
    first = tmp_path / "a.onnx"
    model_io.save_model(model, str(first))
    loaded = model_io.load_model(str(first)).model
    back = read_bn_stats(loaded)
    assert sorted(back) == ["y9", "z1"]
    for name, s in stats.items():
        np.testing.assert_array_equal(back[name].beta, s.beta)
        np.testing.assert_array_equal(back[name].gamma, s.gamma)
        assert back[name].bn == s.bn
    second = tmp_path / "b.onnx"
    model_io.save_model(loaded, str(second))  # read, not changed: the loaded text is saved as it was
    assert second.read_bytes() == first.read_bytes()


def test_old_files_read_the_same(tmp_path):
    """Entries as files carry them: base64 written by the format's encoder, and plain JSON lists."""
    beta, gamma = np.array([0.25, -1.5, 7.0]), np.array([1.0, 0.5, -2.0])
    b64 = {"bn": "bnA", "beta": base64.b64encode(beta.astype("<f8").tobytes()).decode(),
           "gamma": base64.b64encode(gamma.astype("<f8").tobytes()).decode()}
    lists = {"bn": "bnB", "beta": beta.tolist(), "gamma": gamma.tolist()}
    text = json.dumps({"version": 1, "layers": {"y1": b64, "z1": lists}}, separators=(",", ":"), sort_keys=True)
    proto = high_bias_chain()
    helper.set_model_props(proto, {METADATA_KEY: text, "other": "x"})
    path = tmp_path / "old.onnx"
    onnx.save(proto, str(path))
    model = model_io.load_model(str(path)).model
    stats = read_bn_stats(model)
    for name, bn in (("y1", "bnA"), ("z1", "bnB")):
        np.testing.assert_array_equal(stats[name].beta, beta)
        np.testing.assert_array_equal(stats[name].gamma, gamma)
        assert stats[name].bn == bn
    out = tmp_path / "out.onnx"
    model_io.save_model(model, str(out))
    assert {p.key: p.value for p in onnx.load(str(out)).metadata_props}[METADATA_KEY] == text


def test_copies_carry_the_statistics_and_outside_edits_win():
    model, _ = api.prepare(to_ir(high_bias_chain()))
    api.fold_bn(model)
    expected = read_bn_stats(model)["z1"]
    for copy in (model_ops.clone(model), model_ops.upgrade_opset(model, 17)):
        np.testing.assert_array_equal(read_bn_stats(copy)["z1"].beta, expected.beta)
    # serialized by other means mid-run: an empty entry, no stale numbers
    plain = to_ir(ir.serde.serialize_model(model))
    assert read_bn_stats(plain) == {}
    # an entry set from outside after the statistics were read is the newer one
    model.metadata_props[METADATA_KEY] = json.dumps({"version": 1, "layers": {"q": {"beta": [1.0], "gamma": [2.0]}}})
    assert list(read_bn_stats(model)) == ["q"]
    model.metadata_props[METADATA_KEY] = "{not json"
    assert read_bn_stats(model) == {}  # a damaged entry reads as none
