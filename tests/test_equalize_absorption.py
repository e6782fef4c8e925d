"""High-bias absorption only where it is exact: never into a layer that zero-pads its input
or a ConvTranspose (the compensation W2 c would count taps that read padding or no input)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from aimetcli import api
from aimetcli.bn_stats import read_bn_stats
from aimetcli.cli import main
from helpers import assert_same_outputs, init, make_model, to_ir

RNG = np.random.default_rng(5)
C = 8


def high_bias_chain(activation: bool, consumer: str) -> onnx.ModelProto:
    """Conv -> BN (betas 2..4, gammas 0.01: every pre-activation stays above c = beta - 3|gamma|)
    -> [Relu] -> ``consumer``: "conv" (no padding), "padded" (pads 1), "same" (auto_pad SAME_UPPER),
    "convtranspose" (2x2, stride 2) or "gemm" (after a global pool and a flatten)."""
    inits = [init("W1", (RNG.standard_normal((C, 3, 3, 3)) * 0.05).astype(np.float32)),
             init("bn_g", np.full(C, 0.01, np.float32)), init("bn_b", RNG.uniform(2, 4, C).astype(np.float32)),
             init("bn_m", np.zeros(C, np.float32)), init("bn_v", np.ones(C, np.float32))]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["y1"], name="c1", pads=[1] * 4),
             helper.make_node("BatchNormalization", ["y1", "bn_g", "bn_b", "bn_m", "bn_v"], ["z1"], name="bn")]
    a = "z1"
    if activation:
        nodes.append(helper.make_node("Relu", ["z1"], ["a1"]))
        a = "a1"
    w2 = (RNG.standard_normal((4, C, 3, 3))).astype(np.float32)
    if consumer == "conv":
        nodes.append(helper.make_node("Conv", [a, "W2"], ["out"], name="c2"))
    elif consumer == "padded":
        nodes.append(helper.make_node("Conv", [a, "W2"], ["out"], name="c2", pads=[1] * 4))
    elif consumer == "same":
        nodes.append(helper.make_node("Conv", [a, "W2"], ["out"], name="c2", auto_pad="SAME_UPPER"))
    elif consumer == "convtranspose":
        w2 = RNG.standard_normal((C, 4, 2, 2)).astype(np.float32)
        nodes.append(helper.make_node("ConvTranspose", [a, "W2"], ["out"], name="c2", strides=[2, 2]))
    else:
        raise ValueError(consumer)
    inits.append(init("W2", w2))
    return make_model(nodes, [("x", [2, 3, 8, 8])], [("out", None)], inits)


def x_data() -> np.ndarray:
    return RNG.uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)


def equalize(proto):
    model, _ = api.prepare(to_ir(proto))
    return model, api.equalize(model, api.EqualizeOptions())


@pytest.mark.parametrize("activation", [True, False])
@pytest.mark.parametrize("consumer, why", [("padded", "zero-pads its input"), ("same", "zero-pads its input"),
                                           ("convtranspose", "different numbers of kernel taps")])
def test_no_absorption_where_inexact(activation, consumer, why):
    proto = high_bias_chain(activation, consumer)
    model, summary = equalize(proto)
    assert summary.bias_absorbed == []
    assert [layer for layer, _ in summary.bias_skipped] == ["c1"]
    assert summary.bias_skipped[0][1].startswith("c2 ") and why in summary.bias_skipped[0][1]
    assert read_bn_stats(model)["z1"].beta.min() > 1.9  # the statistics say nothing moved
    assert_same_outputs(proto, model, {"x": x_data()}, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", [True, False])
def test_unpadded_consumer_still_absorbs_exactly(activation):
    proto = high_bias_chain(activation, "conv")
    model, summary = equalize(proto)
    assert [(a.layer, a.into, a.channels) for a in summary.bias_absorbed] == [("c1", "c2", C)]
    assert summary.bias_skipped == []
    st = read_bn_stats(model)["z1"]
    left = st.beta - (3 * np.abs(st.gamma) if activation else 0)  # c = beta - 3|gamma| (Relu) or beta absorbed
    np.testing.assert_allclose(left, 0.0, atol=1e-9)
    assert_same_outputs(proto, model, {"x": x_data()}, rtol=1e-5, atol=1e-6)


def test_cli_reports_the_skipped_pair_with_verbose(tmp_path):
    onnx.save(high_bias_chain(True, "padded"), tmp_path / "m.onnx")
    result = CliRunner().invoke(main, ["equalize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "eq.onnx"), "-v"])
    assert result.exit_code == 0, result.output
    assert "absorbed bias in 0 pairs" in result.output
    assert "bias not absorbed from c1: c2 zero-pads its input" in result.output
    assert_same_outputs(onnx.load(tmp_path / "m.onnx"), onnx.load(tmp_path / "eq.onnx"), {"x": x_data()})
