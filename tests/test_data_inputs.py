"""Inputs that are not a plain [N, ...] batch: legacy -1/0 dims, scalar inputs, recurrent
state inputs whose axis 0 is not the sample axis; and the pickled-array wording (issues 15, 16)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from aimetcli import api
from aimetcli import graph as g
from aimetcli.calibration.data import InputSpec, input_specs, open_data
from aimetcli.cli import main
from aimetcli.errors import AimetCliError
from helpers import init, rand, run, to_ir


def ok(result):
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def error_line(result, code=1):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def save(tmp_path, proto, name="m.onnx"):
    path = tmp_path / name
    onnx.save(proto, path)
    return str(path)


def conv_model(batch_dim) -> onnx.ModelProto:
    """Conv + Relu whose input declares ``batch_dim`` (-1 or 0, as legacy converters write)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 4, 8, 8])
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [x], [y], [init("W", rand(4, 3, 3, 3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


# ---------------------------------------------------------------- dim_value -1 / 0


@pytest.mark.parametrize("batch_dim", [-1, 0])
def test_legacy_unknown_batch_dim_is_dynamic(tmp_path, runner, batch_dim):
    """paddle2onnx's dim_value -1 (and 0) is an unknown size: quantsim and evaluate run it with
    any batch size (was: 'the model fixes the batch size to -1')."""
    proto = conv_model(batch_dim)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch_dim
    (spec,) = input_specs(to_ir(proto))
    assert spec.shape == (None, 3, 8, 8) and spec.batch is None
    model = save(tmp_path, proto)
    sim = str(tmp_path / "sim.onnx")
    ok(runner.invoke(main, ["quantsim", model, "-o", sim, "--data", "random:5", "--batch-size", "2"]))
    r = ok(runner.invoke(main, ["evaluate", model, sim, "--data", "random:5", "--batch-size", "2", "--json"]))
    assert json.loads(r.stdout)["samples"] == 5


def test_fixed_dim_reads_sizes_below_one_as_dynamic():
    assert [g.fixed_dim(d) for d in (3, 0, -1, None, ir.SymbolicDim("N"))] == [3, None, None, None, None]
    # activation sizes count an unknown dim as 1, not as -1 (a negative byte count)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, -1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert g.activation_bytes(model) == 4


# ---------------------------------------------------------------- scalar inputs


def scalar_rate_model() -> onnx.ModelProto:
    """y = Conv(x) * float(sr) / 16000: ``sr`` an int64 scalar input (shape []), as a VAD
    model's sample rate."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["srf", "k"], ["scale"]),
             helper.make_node("Mul", ["c", "scale"], ["y"])]
    inits = [init("W", rand(4, 3, 3, 3)), init("k", np.array(16000.0, np.float32))]
    graph = helper.make_graph(nodes, "g", [x, sr], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_scalar_input_from_a_0d_array_feeds_every_run(tmp_path, runner):
    """A 0-d array for a scalar input is the same value for every run; batches stay free
    (was: "expects [] but the data is a scalar")."""
    proto = scalar_rate_model()
    x = rand(5, 3, 8, 8)
    data = tmp_path / "d.npz"
    np.savez(data, x=x, sr=np.int64(16000))
    ds = open_data(str(data), input_specs(to_ir(proto)))
    feeds = list(ds.batches(2))
    assert ds.fixed_batch is None and [f["x"].shape[0] for f in feeds] == [2, 2, 1]
    assert all(f["sr"].shape == () and f["sr"].dtype == np.int64 for f in feeds)
    model, sim = save(tmp_path, proto), str(tmp_path / "sim.onnx")
    ok(runner.invoke(main, ["quantsim", model, "-o", sim, "--data", str(data), "--batch-size", "2"]))
    r = ok(runner.invoke(main, ["evaluate", model, sim, "--data", str(data), "--json"]))
    assert json.loads(r.stdout)["samples"] == 5


def test_scalar_input_from_an_n_array_is_fed_one_value_per_run(tmp_path, runner):
    """An [N] array for a scalar input gives each sample its own value: one run per sample."""
    proto = scalar_rate_model()
    x = rand(3, 3, 8, 8)
    rates = np.array([8000, 16000, 32000], np.int64)
    data = tmp_path / "d.npz"
    np.savez(data, x=x, sr=rates)
    ds = open_data(str(data), input_specs(to_ir(proto)))
    assert ds.fixed_batch == 1 and ds.num_batches(32) == 3
    assert [f["sr"].shape for f in ds.batches(32)] == [(), (), ()]
    got = api.model_outputs(to_ir(proto), ds, batch_size=32)[0]
    want = np.concatenate([run(proto, {"x": x[i:i + 1], "sr": np.array(rates[i])})[0] for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    model, sim = save(tmp_path, proto), str(tmp_path / "sim.onnx")
    ok(runner.invoke(main, ["quantsim", model, "-o", sim, "--data", str(data)]))


def test_scalar_input_given_a_matrix_says_what_it_takes(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x=rand(2, 3, 8, 8), sr=np.zeros((2, 2), np.int64))
    with pytest.raises(AimetCliError, match=r"'sr' is a scalar \(shape \[\]\) but the data has \[2, 2\]; give one "
                                            r"value per sample \[N\], or a 0-d array for every sample"):
        open_data(str(data), input_specs(to_ir(scalar_rate_model())))


# ---------------------------------------------------------------- recurrent state inputs


def state_model() -> onnx.ModelProto:
    """A recurrent step with every dim fixed: audio [1, 16] and state [2, 1, 8] (layers, batch,
    hidden), axis 0 of the state being layers, not samples. y = (audio @ W + mean(state)) @ V,
    state_out = tanh(state + audio @ W)."""
    audio = helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 16])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    state_out = helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, 1, 8])
    nodes = [helper.make_node("MatMul", ["audio", "W"], ["h"], name="proj"),
             helper.make_node("ReduceMean", ["state"], ["sm"], axes=[0], keepdims=0),
             helper.make_node("Add", ["h", "sm"], ["hs"]),
             helper.make_node("MatMul", ["hs", "V"], ["y"], name="head"),
             helper.make_node("Add", ["state", "h"], ["s1"]),
             helper.make_node("Tanh", ["s1"], ["state_out"])]
    graph = helper.make_graph(nodes, "g", [audio, state], [y, state_out], [init("W", rand(16, 8)),
                                                                         init("V", rand(8, 4))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_state_input_given_per_sample_runs_through_quantsim_and_evaluate(tmp_path, runner):
    """state [2, 1, 8] given as [N, 2, 1, 8] is fed one whole state per run, beside audio
    [N, 16] (was: "inputs fix different batch sizes")."""
    proto = state_model()
    n = 6
    audio, states = rand(n, 16), rand(n, 2, 1, 8)
    data = tmp_path / "d.npz"
    np.savez(data, audio=audio, state=states)
    ds = open_data(str(data), input_specs(to_ir(proto)))
    assert ds.fixed_batch == 1 and ds.num_samples == n
    feeds = list(ds.batches(4))
    assert len(feeds) == n and feeds[0]["state"].shape == (2, 1, 8) and feeds[0]["audio"].shape == (1, 16)
    got = api.model_outputs(to_ir(proto), ds)
    want = [run(proto, {"audio": audio[i:i + 1], "state": states[i]}) for i in range(n)]
    np.testing.assert_allclose(got[0], np.concatenate([w[0] for w in want]), rtol=1e-6)
    np.testing.assert_allclose(got[1], np.concatenate([w[1] for w in want]), rtol=1e-6)

    model, sim = save(tmp_path, proto), str(tmp_path / "sim.onnx")
    r = ok(runner.invoke(main, ["quantsim", model, "-o", sim, "--data", str(data), "-v"]))
    assert "fed one sample per run" in r.output
    r = ok(runner.invoke(main, ["evaluate", model, sim, "--data", str(data), "--json"]))
    summary = json.loads(r.stdout)
    assert summary["samples"] == n


def test_state_input_given_as_a_batch_names_the_fix(tmp_path, runner):
    """Given like a batched input, the state's axis 0 (2) clashes with audio's batch (1): the
    error says to give the state one tensor per sample, with the shape to use."""
    data = tmp_path / "d.npz"
    np.savez(data, audio=rand(4, 16), state=rand(4, 1, 8))
    line = error_line(runner.invoke(main, ["quantsim", save(tmp_path, state_model()), "-o",
                                           str(tmp_path / "s.onnx"), "--data", str(data)]))
    assert "fix different batch sizes ('audio' 1, 'state' 2)" in line
    assert "'state' as [N, 2, 1, 8]" in line
    assert not (tmp_path / "s.onnx").exists()


def test_one_dim_too_many_for_a_dynamic_batch_input_stays_an_error(tmp_path):
    """Per-sample feeding is for inputs whose axis 0 is fixed: for [N, T], data [5, 7, 9] is a
    mistake, not 5 runs of a batch of 7."""
    path = tmp_path / "d.npy"
    np.save(path, rand(5, 7, 9))
    inputs = [InputSpec("x", ("N", "T"), np.dtype(np.float32))]
    with pytest.raises(AimetCliError, match=r"input 'x' expects \[N, T\] but the data has \[5, 7, 9\]"):
        open_data(str(path), inputs)
    # a fixed axis 0 of 7 takes it as one [7, 9] tensor per sample
    ds = open_data(str(path), [InputSpec("x", (7, "T"), np.dtype(np.float32))])
    assert ds.fixed_batch == 1 and next(iter(ds.batches(4)))["x"].shape == (7, 9)


def test_per_sample_input_beside_a_fixed_batch_above_one_is_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "t"], ["y"]),
                               helper.make_node("ReduceSum", ["s"], ["t"], axes=[0], keepdims=1)], "g", [x, s], [y])
    model = to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    data = tmp_path / "d.npz"
    np.savez(data, x=rand(4, 4), s=rand(4, 3, 4))
    with pytest.raises(AimetCliError, match=r"input 's' is fed one sample per run .* but 'x' fixes a batch of 2"):
        open_data(str(data), input_specs(model))


# ---------------------------------------------------------------- pickled arrays


def test_pickled_arrays_are_named_as_such(tmp_path, runner):
    """np.save of an object array is not 'not saved with numpy.save': it holds Python objects."""
    model = save(tmp_path, conv_model(-1))
    npy = tmp_path / "obj.npy"
    np.save(npy, np.array([rand(3, 8, 8), rand(3, 8, 8)], dtype=object), allow_pickle=True)
    line = error_line(runner.invoke(main, ["quantsim", model, "-o", str(tmp_path / "s.onnx"), "--data", str(npy)]))
    assert "holds Python objects" in line and "save a numeric array instead" in line
    assert "save it with numpy.save" not in line
    npz = tmp_path / "obj.npz"
    np.savez(npz, x=np.array([rand(3, 8, 8), None], dtype=object))
    line = error_line(runner.invoke(main, ["quantsim", model, "-o", str(tmp_path / "s.onnx"), "--data", str(npz)]))
    assert "array 'x' holds Python objects" in line
