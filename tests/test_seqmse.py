"""SeqMSE: the candidate losses on second moments, the layer-by-layer search against a brute force
over the samples, the frozen grids through quantsim and export, and --weight-range on the CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import init, make_model, rand, to_ir
from onnx import helper

from aimetcli import api, runtime
from aimetcli.calibration.data import input_specs, open_data
from aimetcli.cli import main
from aimetcli.commands._options import WEIGHT_RANGES
from aimetcli.export import export
from aimetcli.kernels.quant import encoding_from_range, fake_quantize, quantize
from aimetcli.kernels.seqmse import CANDIDATES, best_encoding, candidate_grids
from aimetcli.options import QuantOptions, WeightRange
from aimetcli.quantsim.calibrate import param_encodings
from aimetcli.quantsim.config import load_config
from aimetcli.quantsim.frozen import frozen_record
from aimetcli.quantsim.placement import place_quantizers
from aimetcli.seqmse import seq_mse


def _layer(seed=0, m=6, d=10, n=400):
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(m, d)) * rng.uniform(0.2, 2.0, size=(m, 1))).astype(np.float32)
    w[0, 0] = 8.0  # an outlier on an input that hardly varies: clipping it pays at 4 bits
    x = rng.normal(size=(n, d))
    x[:, 0] *= 0.02
    f = x + 0.05 * rng.normal(size=(n, d))  # the FP32 patches; x: the quantized model's
    return w, x, f


def _base(w, per_channel):
    return (encoding_from_range(w.min(axis=1), w.max(axis=1), 4, True, axis=0) if per_channel
            else encoding_from_range(w.min(), w.max(), 4, True))


@pytest.mark.parametrize("per_channel", [True, False])
def test_losses_are_the_output_error_on_the_samples_and_the_choice_their_minimum(per_channel):
    w, x, f = _layer()
    base = _base(w, per_channel)
    grids = candidate_grids(base)
    enc, losses = best_encoding(w, x.T @ x, base)
    assert losses.shape == (CANDIDATES, w.shape[0])
    direct = np.stack([(((fake_quantize(w, e).astype(np.float64) - w) @ x.T) ** 2).sum(axis=1) for e in grids])
    np.testing.assert_allclose(losses, direct, rtol=1e-9)
    if per_channel:
        k = np.argmin(direct, axis=0)
        assert np.array_equal(enc.scale, np.array([grids[k[c]].scale[c] for c in range(w.shape[0])]))
        assert enc.scale[0] < base.scale[0]  # the outlier's channel is clipped
    else:
        assert enc == grids[int(np.argmin(direct.sum(axis=1)))]
    _, asym = best_encoding(w, x.T @ x, base, cross=x.T @ f)  # asym: the FP32 target, up to a constant a channel
    target = np.stack([((fake_quantize(w, e).astype(np.float64) @ x.T - w @ f.T) ** 2).sum(axis=1) for e in grids])
    np.testing.assert_allclose(asym + ((w.astype(np.float64) @ f.T) ** 2).sum(axis=1), target, rtol=1e-9)


def test_candidates_scale_the_min_max_grid():
    w, _, _ = _layer(seed=3)
    base = _base(w, True)
    grids = candidate_grids(base)
    assert grids[-1] == base
    for k, e in enumerate(grids):
        np.testing.assert_allclose(e.scale, base.scale * (k + 1) / CANDIDATES, rtol=1e-6)
    assert set(WEIGHT_RANGES) == {r.value for r in WeightRange}


# ----------------------------------------------------------------------------- the model
def _net():
    rng = np.random.default_rng(11)
    w1 = rand(4, 2, 3, 3, rng=rng)
    w1[1, 0, 1, 1] = 6.0  # outliers: worth clipping at 4 bits
    w2 = rand(5, 4 * 16, rng=rng)
    w2[2, 7] = -5.0
    inits = [init("W1", w1), init("B1", rand(4, rng=rng)), init("W2", w2), init("shape", np.array([0, -1], np.int64))]
    nodes = [helper.make_node("Conv", ["input", "W1", "B1"], ["c1"], pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Reshape", ["r1", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "W2"], ["logits"], transB=1)]
    return make_model(nodes, [("input", [None, 2, 8, 8])], [("logits", None)], inits)


def _brute_force(w, x, base, layer_out):
    """The grid among the candidates with the least output error ||layer(x, Wq) - layer(x, W)||^2
    per channel (per-tensor: summed), computed from the samples."""
    grids = candidate_grids(base)
    y = layer_out(w, x)
    losses = np.stack([((layer_out(fake_quantize(w, e), x) - y) ** 2).sum(axis=(0, 2)) for e in grids])
    if base.per_channel:
        k = losses.shape[0] - 1 - np.argmin(losses[::-1], axis=0)
        return np.array([grids[k[c]].scale[c] for c in range(losses.shape[1])])
    return grids[losses.shape[0] - 1 - int(np.argmin(losses.sum(axis=1)[::-1]))].scale


def _conv(w, x):  # [N, C_out, positions], stride 2, pad 1, via onnxruntime's own Conv
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4, strides=[2, 2])
    proto = make_model([node], [("x", list(x.shape))], [("y", None)], [init("w", w)])
    (y,) = runtime.Session(proto.SerializeToString(), runtime.SIMULATE).run({"x": x})
    return y.reshape(y.shape[0], y.shape[1], -1).astype(np.float64)


def _gemm(w, x):  # [N, out, 1]
    return (x.astype(np.float64) @ w.T.astype(np.float64))[:, :, None]


@pytest.mark.parametrize("per_channel", [False, True])
def test_each_layer_gets_the_brute_force_range_with_inputs_quantized_up_to_it(tmp_path, per_channel):
    proto = _net()
    x = np.random.default_rng(2).standard_normal((12, 2, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x)
    model = to_ir(proto)
    opts = QuantOptions(param_bw=4, per_channel=per_channel, weight_range=WeightRange.MSE)
    original = to_ir(proto)
    bases = param_encodings(original, place_quantizers(original, load_config(None), opts), opts)
    w1, w2 = (np.asarray(original.graph.initializers[n].const_value.numpy()) for n in ("W1", "W2"))
    result = seq_mse(model, open_data(str(tmp_path / "d.npz"), input_specs(model)), opts)
    assert [r.weight for r in result.layers] == ["W1", "W2"] and result.passes == 2
    frozen, record = frozen_record(model)
    assert record["weight_range"] == "mse"
    # the Conv reads the graph input: its brute force runs on the samples themselves
    assert np.array_equal(frozen["W1"].scale, _brute_force(w1, x, bases["W1"], _conv))
    assert any(r.fraction < 1 for r in result.layers)  # some range is narrower than min-max
    # the Gemm's input comes from the model with W1 on its chosen grid (activations float)
    proto_q = onnx.ModelProto()
    proto_q.CopyFrom(proto)
    proto_q.graph.initializer[0].CopyFrom(init("W1", fake_quantize(w1, frozen["W1"])))
    proto_q.graph.output.append(helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, None))
    f = runtime.Session(proto_q.SerializeToString(), runtime.SIMULATE).run({"input": x}, ["f"])[0]
    assert np.array_equal(frozen["W2"].scale, _brute_force(w2, f, bases["W2"], _gemm))
    # the weights lie on their frozen grids; quantsim keeps them and export writes their integers
    for name, w in (("W1", w1), ("W2", w2)):
        assert np.array_equal(np.asarray(model.graph.initializers[name].const_value.numpy()),
                              fake_quantize(w, frozen[name]))
    data = open_data(str(tmp_path / "d.npz"), input_specs(model))
    sim, encodings, summary = api.quantsim(api.clone(model), data, opts)
    assert not summary.warnings
    export(sim, str(tmp_path / "out"))
    qdq = onnx.load(tmp_path / "out" / "model_qdq.onnx")
    ints = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    for name, w in (("W1", w1), ("W2", w2)):
        assert encodings.params[name] == frozen[name]
        stored = next(v for k, v in ints.items() if k.startswith(name) and v.dtype.kind in "iu" and v.shape == w.shape)
        zp = next(v for k, v in ints.items() if k.startswith(name) and "zero" in k).astype(np.int64)
        zp = zp.reshape([-1] + [1] * (w.ndim - 1)) if zp.ndim else zp
        assert np.array_equal(stored.astype(np.int64) - zp, quantize(w, frozen[name]).astype(np.int64))


def test_weight_range_mse_on_the_cli(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_net(), src)
    r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(tmp_path / "s.onnx"), "--data", "random:8",
                                  "--param-bw", "4", "--weight-range", "mse", "--json"])
    assert r.exit_code == 0, r.output
    assert "SeqMSE 1: " in r.stderr and "SeqMSE 2: " in r.stderr
    assert onnx.load(src).SerializeToString() == _net().SerializeToString()  # input untouched
    r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(tmp_path / "t.onnx"), "--data", "random:8",
                                  "--weight-range", "best"])
    assert r.exit_code == 2 and "--weight-range" in r.output
