"""quantsim placement: a LayerNormalization or GELU written as several ops is one unit, float
inside and quantized at its output (as AIMET's ONNX graph passes do).

The failure this guards against: an 8-bit grid on ``(x - mean)^2`` squares the dynamic range,
so the variance of every token much quieter than the loudest one rounds to 0 (PP-OCRv6's
recognizer kept 8% of its text reads)."""

from __future__ import annotations

import numpy as np
from onnx import helper

from aimetcli import api
from aimetcli.calibration.data import input_specs, open_data
from aimetcli.quantsim.config import load_config
from aimetcli.quantsim.placement import QuantOptions, place_quantizers
from helpers import init, make_model, run, to_ir

C = 16


def layernorm_nodes(x: str, y: str, affine: bool = True) -> list:
    """torch's export of LayerNorm below opset 17 (and paddle2onnx's)."""
    nodes = [
        helper.make_node("ReduceMean", [x], ["mean"], axes=[-1], name="ln_mean"),
        helper.make_node("Sub", [x, "mean"], ["d"], name="ln_sub"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="ln_pow"),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1], name="ln_var"),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="ln_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="ln_sqrt"),
        helper.make_node("Div", ["d", "std"], ["norm" if affine else y], name="ln_div"),
    ]
    if affine:
        nodes += [helper.make_node("Mul", ["norm", "gamma"], ["scaled"], name="ln_gamma"),
                  helper.make_node("Add", ["scaled", "beta"], [y], name="ln_beta")]
    return nodes


LN_INITS = [init("two", np.float32(2)), init("eps", np.float32(1e-5)),
            init("gamma", np.linspace(0.5, 1.5, C).astype(np.float32)),
            init("beta", np.linspace(-0.2, 0.2, C).astype(np.float32))]


def layernorm_model(affine: bool = True):
    return make_model(layernorm_nodes("x", "y", affine), [("x", ["N", 8, C])], [("y", None)], LN_INITS)


def gelu_model(half_first: bool = False):
    """GELU x * 0.5 * (1 + erf(x / sqrt 2)) as torch writes it, or with x * 0.5 taken first."""
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["xs"], name="g_div"),
             helper.make_node("Erf", ["xs"], ["e"], name="g_erf"),
             helper.make_node("Add", ["e", "one"], ["e1"], name="g_add")]
    if half_first:
        nodes += [helper.make_node("Mul", ["x", "half"], ["xh"], name="g_half"),
                  helper.make_node("Mul", ["xh", "e1"], ["y"], name="g_mul")]
    else:
        nodes += [helper.make_node("Mul", ["x", "e1"], ["xe"], name="g_mul"),
                  helper.make_node("Mul", ["xe", "half"], ["y"], name="g_half")]
    inits = [init("sqrt2", np.float32(np.sqrt(2))), init("one", np.float32(1)), init("half", np.float32(0.5))]
    return make_model(nodes, [("x", ["N", C])], [("y", None)], inits)


def placed(proto):
    model, _ = api.prepare(to_ir(proto))
    return place_quantizers(model, load_config(None), QuantOptions())


def quantized_tensors(proto) -> set[str]:
    return {a.tensor for a in placed(proto).activations}


def test_decomposed_layernorm_is_quantized_at_its_output_only():
    p = placed(layernorm_model())
    assert {a.tensor for a in p.activations} == {"x", "y"}
    reasons = dict(p.skipped)
    for inner in ("mean", "d", "sq", "var", "var_eps", "std", "norm", "scaled"):
        assert "inside a LayerNormalization written as 9 ops" in reasons[inner], inner


def test_layernorm_without_affine_and_a_broken_pattern():
    assert quantized_tensors(layernorm_model(affine=False)) == {"x", "y"}
    # Pow(d, 3) is no variance: nothing is fused, every op output gets its quantizer
    proto = layernorm_model()
    proto.graph.initializer[0].CopyFrom(init("two", np.float32(3)))
    assert {"sq", "var", "norm"} <= quantized_tensors(proto)


def test_erf_gelu_is_quantized_at_its_output_only():
    for half_first in (False, True):
        p = placed(gelu_model(half_first))
        assert {a.tensor for a in p.activations} == {"x", "y"}, half_first
        assert all("inside a GELU written as 5 ops" in r for _, r in p.skipped)
        assert len(p.skipped) == 4


def sim_sqnr(proto, x, tmp_path) -> float:
    np.savez(tmp_path / "x.npz", x=x)
    model, _ = api.prepare(to_ir(proto))
    sim, _, _ = api.quantsim(model, open_data(tmp_path / "x.npz", input_specs(model)), QuantOptions(),
                             run=api.RunOptions(batch_size=16))
    ref, got = run(proto, {"x": x})[0], run(sim, {"x": x})[0]
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)))


def test_layernorm_of_tokens_of_different_scales_survives_quantsim(tmp_path):
    """Tokens whose deviations span 25x (as in a transformer's residual stream): with a grid on
    (x - mean)^2 (625x) the quiet tokens' variance rounds to 0 and their outputs blow up; as one
    unit only the input and output grids are left (measured 24.4 dB; 1.4 dB with every op
    output quantized)."""
    rng = np.random.default_rng(0)
    scales = np.exp(rng.uniform(np.log(0.2), np.log(5.0), (64, 8, 1)))
    x = (rng.standard_normal((64, 8, C)) * scales + rng.normal(0, 0.5, (64, 8, 1))).astype(np.float32)
    assert sim_sqnr(layernorm_model(), x, tmp_path) > 20


def test_a_bias_written_as_a_separate_add_is_inside_the_layer():
    """paddle2onnx: Conv, then Add of the bias reshaped at run time to [1, C, 1, 1]; torch: a
    Linear on 3-D inputs is MatMul then Add. The grid goes after the bias, as a runtime's kernel
    computes it; a BatchNormalization left after a Conv is fused the same way."""
    nodes = [helper.make_node("Reshape", ["b", "shape"], ["b4"], name="bias_shape"),
             helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "b4"], ["cb"], name="bias"),
             helper.make_node("Relu", ["cb"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W2"], ["c2"], name="conv2"),
             helper.make_node("BatchNormalization", ["c2", "g", "beta", "mu", "var"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r2"], name="relu2"),
             helper.make_node("Reshape", ["r2", "flat"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "Wfc"], ["fc"], name="fc"),
             helper.make_node("Add", ["fc", "bfc"], ["y"], name="fc_bias")]
    rng = np.random.default_rng(0)
    inits = [init("W", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)), init("b", np.arange(4, dtype=np.float32)),
             init("shape", np.array([1, 4, 1, 1])), init("W2", rng.standard_normal((4, 4, 1, 1)).astype(np.float32)),
             init("g", np.ones(4, np.float32)), init("beta", np.zeros(4, np.float32)),
             init("mu", np.zeros(4, np.float32)), init("var", np.ones(4, np.float32)),
             init("flat", np.array([0, 4 * 6 * 6])), init("Wfc", rng.standard_normal((144, 5)).astype(np.float32)),
             init("bfc", np.ones(5, np.float32))]
    p = placed(make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", None)], inits))
    assert {a.tensor for a in p.activations} == {"x", "r", "r2", "y"}
    reasons = dict(p.skipped)
    assert reasons["c"].startswith("inside a layer with bias written as 2 ops")
    assert reasons["fc"].startswith("inside a layer with bias written as 2 ops")
    assert reasons["cb"] == "inside supergroup Add+Relu"
    assert reasons["c2"] == reasons["bn"] == "inside supergroup Conv+BatchNormalization+Relu"


def test_an_onnx_ml_op_is_named_as_one_not_as_a_custom_op():
    """skl2onnx's Scaler before an MLP (a wheel's model): left unquantized, and called an ONNX-ML op
    (report.json called the standard ai.onnx.ml domain's op a custom one)."""
    scaler = helper.make_node("Scaler", ["x"], ["xs"], domain="ai.onnx.ml", offset=[0.5] * 4, scale=[2.0] * 4,
                              name="scaler")
    nodes = [scaler, helper.make_node("MatMul", ["xs", "w"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [2, 4])],
                              [helper.make_tensor_value_info("y", 1, None)], [init("w", np.ones((4, 3), np.float32))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model, _ = api.prepare(to_ir(proto))
    placement = place_quantizers(model, load_config(None), QuantOptions())
    assert ("scaler", "ONNX-ML op ai.onnx.ml::Scaler left unquantized") in placement.skipped


def test_layers_after_an_onnx_ml_scaler_get_their_shapes():
    """onnx's shape inference has no shape function for ai.onnx.ml's Scaler, so the sklearn MLP's
    MatMuls after it had inputs of unknown rank and bias-correct skipped all three; preparation now
    gives the Scaler's output its input's shape and infers again."""
    from aimetcli.layers import as_layer

    scaler = helper.make_node("Scaler", ["x"], ["xs"], domain="ai.onnx.ml", offset=[0.5] * 4, scale=[2.0] * 4,
                              name="scaler")
    nodes = [scaler, helper.make_node("MatMul", ["xs", "w"], ["h"], name="fc"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["n", 4])],
                              [helper.make_tensor_value_info("y", 1, None)], [init("w", np.ones((4, 3), np.float32))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model, _ = api.prepare(to_ir(proto))
    fc = next(n for n in model.graph if n.name == "fc")
    assert as_layer(fc).input_known_2d
    assert len(model.graph.node(0).outputs[0].shape) == 2
