"""Bad inputs through the CLI: one ``Error:`` line and exit 1 (2 for usage), or a documented skip.

Complements tests/test_cli_io.py (which covers fold-bn on a missing, empty, random,
text, truncated or directory input, a dangling node input, a missing output
directory, ...): here the other commands, the model contents (NaN/Inf weights, bad
BN statistics, weights as graph inputs, subgraphs, opsets 7-21, float16/bfloat16),
calibration data, quantsim configs and option combinations.

Every failing case also checks that no output was left behind, or only a whole,
valid model; every documented skip checks that its reason is in the --json output.
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from aimetcli.cli import main
from helpers import bn_inits, bn_node, init, make_model, op_count, rand

# the IR version each opset was released with (IR 3 lists every initializer as a graph input)
OPSET_IR = {7: 3, 8: 3, 9: 4, 10: 5, 11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


def invoke(runner, *args, **kw):
    return runner.invoke(main, [str(a) for a in args], **kw)


def one_error_line(result, code=1) -> str:
    """Exit ``code`` and exactly one non-empty stderr line, starting with 'Error: '."""
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and len(lines[0]) > len("Error: ") + 10, lines[0]
    assert "Traceback" not in result.output and "internal error" not in lines[0], lines[0]
    return lines[0]


def succeeded(result) -> dict:
    """Exit 0 with --json -q: the summary, and nothing but warnings on stderr."""
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "Traceback" not in result.output and "Error" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def whole_or_absent(*paths) -> None:
    """No partial output: each path is absent or a whole model onnx.checker accepts; no staging left."""
    for path in paths:
        path = os.fspath(path)
        if os.path.exists(path) and path.endswith(".onnx"):
            onnx.checker.check_model(onnx.load(path), full_check=True)
        parent = os.path.dirname(path) or "."
        if os.path.isdir(parent):
            assert not [p for p in os.listdir(parent) if p.startswith(".aimetcli-")]


def error_case(runner, args, outputs, code=1) -> str:
    line = one_error_line(invoke(runner, *args), code)
    whole_or_absent(*outputs)
    return line


def runs(path, x=None) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
    x = rand(2, 3, 8, 8) if x is None else x
    return sess.run(None, {"x": x})


# ----------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------
def cbr(w=None, bn=None, eps=1e-5, with_bn=True) -> onnx.ModelProto:
    """Conv(3->4, pad 1) [-> BN] -> Relu on x[N, 3, 8, 8]."""
    inits = [init("W", rand(4, 3, 3, 3) if w is None else w)]
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1] * 4)]
    if with_bn:
        params = bn_inits("bn", 4)
        for key, arr in (bn or {}).items():  # g, b, m, v
            i = "gbmv".index(key)
            params[i] = init(params[i].name, np.asarray(arr, np.float32))
        inits += params
        nodes.append(bn_node("bn", "y", "z", eps=eps))
    nodes.append(helper.make_node("Relu", [nodes[-1].output[0]], ["r"], name="relu"))
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("r", None)], inits)


def save(tmp_path, name, proto) -> str:
    path = tmp_path / name
    onnx.save(proto, path)
    return str(path)


@pytest.fixture
def model(tmp_path):
    return save(tmp_path, "m.onnx", cbr())


@pytest.fixture
def folded(tmp_path):
    """No BN: quantsim prints no warning, so its stderr holds the error alone."""
    return save(tmp_path, "nobn.onnx", cbr(with_bn=False))


def cbr_at_opset(opset: int) -> onnx.ModelProto:
    """Conv+bias -> BN -> Relu written as an exporter of that opset would."""
    inits = [init("W", rand(4, 3, 3, 3)), init("B", rand(4))] + bn_inits("bn", 4)
    bn_attrs = {"epsilon": 1e-5, **({"spatial": 1} if opset < 9 else {})}
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1] * 4),
        helper.make_node("BatchNormalization", ["y", "bn_g", "bn_b", "bn_m", "bn_v"], ["z"], name="bn", **bn_attrs),
        helper.make_node("Relu", ["z"], ["r"], name="relu"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])]
    if OPSET_IR[opset] < 4:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("r", TensorProto.FLOAT,
                                                                                 ["N", 4, 8, 8])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = OPSET_IR[opset]
    onnx.checker.check_model(proto, full_check=True)
    return proto


def half_model(elem: int) -> onnx.ModelProto:
    """float x -> Cast -> Conv -> BN -> Relu -> Cast, weights in float16 or bfloat16."""
    rng = np.random.default_rng(5)

    def tensor(name, arr):
        arr = np.asarray(arr, np.float32)
        if elem == TensorProto.BFLOAT16:
            bits = arr.astype(ml_dtypes.bfloat16).view(np.uint16).reshape(-1).tolist()
            return helper.make_tensor(name, elem, arr.shape, bits)
        return numpy_helper.from_array(arr.astype(np.float16), name)

    inits = [tensor("W", rand(4, 3, 3, 3)), tensor("B", rand(4)), tensor("bn_g", rng.uniform(0.5, 1.5, 4)),
             tensor("bn_b", rng.normal(0, 0.3, 4)), tensor("bn_m", rng.normal(0, 0.2, 4)),
             tensor("bn_v", rng.uniform(0.5, 2.0, 4))]
    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], to=elem, name="cast_in"),
        helper.make_node("Conv", ["xh", "W", "B"], ["y"], name="conv", pads=[1] * 4),
        helper.make_node("BatchNormalization", ["y", "bn_g", "bn_b", "bn_m", "bn_v"], ["z"], name="bn"),
        helper.make_node("Relu", ["z"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["out"], to=TensorProto.FLOAT, name="cast_out"),
    ]
    # Conv takes bfloat16 from opset 22 on
    opset = 22 if elem == TensorProto.BFLOAT16 else 13
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 10
    onnx.checker.check_model(proto, full_check=True)
    return proto


# ----------------------------------------------------------------------------------
# files and paths (the fold-bn cases are in test_cli_io.py)
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command, content, expect", [
    ("equalize", b"", "empty"),
    ("quantsim", os.urandom(200) + b"\xff\xff", "not an ONNX model"),
    ("bias-correct", b"name,value\n1,2\n" * 20, "not an ONNX model"),
    ("evaluate", None, "no such file"),
])
def test_bad_model_file_other_commands(runner, tmp_path, command, content, expect):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "o.onnx"
    args = {"equalize": [command, path, "-o", out],
            "quantsim": [command, path, "-o", out, "--data", "random:4"],
            "bias-correct": [command, path, "-o", out, "--method", "analytical"],
            "evaluate": [command, path, "--data", "random:4"]}[command]
    assert expect in error_case(runner, args, [out, tmp_path / "o.encodings"])
    assert not out.exists()


def test_directory_as_model_for_quantsim(runner, tmp_path):
    out = tmp_path / "o.onnx"
    line = error_case(runner, ["quantsim", tmp_path, "-o", out, "--data", "random:4"], [out])
    assert "is a directory" in line


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5, 0.75, 0.97])
def test_truncated_protobuf_anywhere(runner, tmp_path, model, fraction):
    """A cut anywhere: either a one-line error, or (when the cut leaves a complete,
    valid message, which protobuf cannot tell apart) a whole valid model."""
    data = open(model, "rb").read()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    out = tmp_path / "o.onnx"
    r = invoke(runner, "fold-bn", path, "-o", out)
    if r.exit_code == 0:
        onnx.checker.check_model(onnx.load(out), full_check=True)
    else:
        line = one_error_line(r)
        assert "not an ONNX model" in line or "onnx.checker" in line or "cannot be read" in line, line
        assert not out.exists()


def test_output_is_an_existing_directory(runner, tmp_path, model):
    target = tmp_path / "outdir"
    target.mkdir()
    assert "is a directory" in error_case(runner, ["fold-bn", model, "-o", target], [])
    assert target.is_dir() and not list(target.iterdir())


def test_encodings_path_is_a_directory(runner, tmp_path, folded):
    (tmp_path / "encdir").mkdir()
    out = tmp_path / "sim.onnx"
    line = error_case(runner, ["quantsim", folded, "-o", out, "--data", "random:4", "--encodings",
                               tmp_path / "encdir"], [out])
    assert "is a directory" in line
    assert not out.exists()


def test_equalize_output_in_missing_directory(runner, tmp_path, model):
    out = tmp_path / "missing" / "eq.onnx"
    assert "does not exist" in error_case(runner, ["equalize", model, "-o", out], [])


def test_encodings_in_missing_directory(runner, tmp_path, folded):
    out = tmp_path / "sim.onnx"
    line = error_case(runner, ["quantsim", folded, "-o", out, "--data", "random:4", "--encodings",
                               tmp_path / "missing" / "x.encodings"], [out])
    assert "does not exist" in line
    assert not out.exists()  # checked before any work


@pytest.mark.parametrize("command", ["equalize", "quantsim"])
def test_dangling_conv_input(runner, tmp_path, command):
    proto = cbr()
    proto.graph.node[0].input[1] = "W_missing"  # the Conv reads a tensor nothing produces
    path = save(tmp_path, "dangling.onnx", proto)
    out = tmp_path / "o.onnx"
    args = [command, path, "-o", out] + (["--data", "random:4"] if command == "quantsim" else [])
    line = error_case(runner, args, [out])
    assert "onnx.checker" in line and "W_missing" in line


# ----------------------------------------------------------------------------------
# model contents
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_weights(runner, tmp_path, bad):
    w = rand(4, 3, 3, 3)
    w[1, 0, 2, 2] = bad
    path = save(tmp_path, "nonfinite.onnx", cbr(w=w))
    # fold-bn and equalize leave the layer alone and say why
    doc = succeeded(invoke(runner, "fold-bn", path, "-o", tmp_path / "f.onnx", "--json", "-q"))
    assert doc["remaining_bn"] == 1 and not doc["folded"]
    assert "NaN or Inf" in doc["skipped"][0]["reason"]
    doc = succeeded(invoke(runner, "equalize", path, "-o", tmp_path / "e.onnx", "--json", "-q"))
    assert any("NaN or Inf" in s["reason"] and s["layer"] == "conv" for s in doc["stops"])
    whole_or_absent(tmp_path / "f.onnx", tmp_path / "e.onnx")
    # quantsim names the tensor instead of quantizing NaN into some integer
    folded_nan = save(tmp_path, "nonfinite_nobn.onnx", cbr(w=w, with_bn=False))
    out = tmp_path / "sim.onnx"
    line = error_case(runner, ["quantsim", folded_nan, "-o", out, "--data", "random:4"],
                      [out, tmp_path / "sim.encodings"])
    assert "'W'" in line and "NaN/Inf" in line
    assert not out.exists() and not (tmp_path / "sim.encodings").exists()


def test_nonfinite_bn_parameters(runner, tmp_path):
    path = save(tmp_path, "bnnan.onnx", cbr(bn={"g": [0.1, np.nan, 0.2, 0.3]}))
    doc = succeeded(invoke(runner, "fold-bn", path, "-o", tmp_path / "f.onnx", "--json", "-q"))
    assert doc["skipped"] == [{"bn": "bn", "reason": "its parameters contain NaN or Inf"}]
    whole_or_absent(tmp_path / "f.onnx")


def test_bn_zero_variance_folds(runner, tmp_path):
    """var = 0 is valid statistics (epsilon keeps the denominator positive): folded exactly."""
    path = save(tmp_path, "var0.onnx", cbr(bn={"v": [1.0, 0.0, 1.0, 0.0]}))
    out = tmp_path / "f.onnx"
    doc = succeeded(invoke(runner, "fold-bn", path, "-o", out, "--json", "-q"))
    assert doc["remaining_bn"] == 0
    x = rand(2, 3, 8, 8)
    np.testing.assert_allclose(runs(out, x)[0], runs(path, x)[0], rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("var, eps", [([1.0, -0.5, 1.0, 1.0], 1e-5), ([1.0, 0.0, 1.0, 1.0], 0.0)])
def test_bn_nonpositive_variance_is_skipped(runner, tmp_path, var, eps):
    path = save(tmp_path, "badvar.onnx", cbr(bn={"v": var}, eps=eps))
    out = tmp_path / "f.onnx"
    doc = succeeded(invoke(runner, "fold-bn", path, "-o", out, "--json", "-q"))
    assert doc["remaining_bn"] == 1
    assert "variance + epsilon is not positive" in doc["skipped"][0]["reason"]
    whole_or_absent(out)
    doc = succeeded(invoke(runner, "equalize", path, "-o", tmp_path / "e.onnx", "--json", "-q"))
    assert doc["folded_bn"] == 0
    assert op_count(onnx.load(tmp_path / "e.onnx"), "BatchNormalization") == 1


def test_conv_weight_is_graph_input(runner, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1] * 4), bn_node("bn", "y", "z"),
             helper.make_node("Relu", ["z"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W2"], ["o"], name="conv2")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
         helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3, 3, 3])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, ["N", 5, 8, 8])],
        bn_inits("bn", 4) + [init("W2", rand(5, 4, 1, 1))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    path = save(tmp_path, "winput.onnx", proto)
    doc = succeeded(invoke(runner, "fold-bn", path, "-o", tmp_path / "f.onnx", "--json", "-q"))
    assert doc["remaining_bn"] == 1 and "W of conv is a graph input" in doc["skipped"][0]["reason"]
    doc = succeeded(invoke(runner, "equalize", path, "-o", tmp_path / "e.onnx", "--json", "-q"))
    assert {"layer": "conv", "reason": "weight W of conv is a graph input, not a constant"} in doc["stops"]
    assert doc["scaling_sets"] == 0
    for out in ("f.onnx", "e.onnx"):
        m = onnx.load(tmp_path / out)
        onnx.checker.check_model(m, full_check=True)
        assert [i.name for i in m.graph.input] == ["x", "W"]


def test_bn_inside_if_subgraph(runner, tmp_path):
    then_g = helper.make_graph([bn_node("bn_in_if", "y", "t")], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 4, 8, 8])])
    else_g = helper.make_graph([helper.make_node("Identity", ["y"], ["e"], name="id")], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 4, 8, 8])])
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1] * 4),
             helper.make_node("If", ["cond"], ["r"], name="if", then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [init("W", rand(4, 3, 3, 3)), numpy_helper.from_array(np.array(True), "cond")]
                              + bn_inits("bn_in_if", 4))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    path = save(tmp_path, "ifbn.onnx", proto)
    out = tmp_path / "f.onnx"
    doc = succeeded(invoke(runner, "fold-bn", path, "-o", out, "--json", "-q"))
    assert doc["skipped"] == [{"bn": "bn_in_if", "reason": "inside a subgraph (If/Loop/Scan); left as is"}]
    assert doc["remaining_bn"] == 1
    x = rand(2, 3, 8, 8)
    np.testing.assert_array_equal(runs(out, x)[0], runs(path, x)[0])
    assert succeeded(invoke(runner, "equalize", path, "-o", tmp_path / "e.onnx", "--json", "-q"))["folded_bn"] == 0
    whole_or_absent(out, tmp_path / "e.onnx")
    # bias correction's graph copies the subgraph, which reads the corrected conv output
    doc = succeeded(invoke(runner, "bias-correct", path, "-o", tmp_path / "b.onnx", "--data", "random:8",
                           "--method", "empirical", "--json", "-q"))
    assert [c["layer"] for c in doc["corrected"]] == ["conv"] and doc["grids_in_run"]


@pytest.mark.parametrize("opset", sorted(OPSET_IR))
def test_conv_bn_relu_at_every_opset(runner, tmp_path, opset):
    """fold-bn and equalize work at opsets 7-21 (IR 3 included); quantsim raises the
    opset to 13 where needed. A one-line error is accepted, never a traceback or an
    invalid output."""
    path = save(tmp_path, f"op{opset}.onnx", cbr_at_opset(opset))
    x = rand(2, 3, 8, 8)
    ref = runs(path, x)[0]
    for command in ("fold-bn", "equalize"):
        out = tmp_path / f"{command}.onnx"
        r = invoke(runner, command, path, "-o", out, "--json", "-q")
        if r.exit_code:
            one_error_line(r)
            whole_or_absent(out)
            continue
        doc = succeeded(r)
        assert doc.get("remaining_bn", 0) == 0 and doc.get("folded_bn", 1) == 1, doc
        m = onnx.load(out)
        onnx.checker.check_model(m, full_check=True)
        assert m.opset_import[0].version == opset
        np.testing.assert_allclose(runs(out, x)[0], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    out = tmp_path / "sim.onnx"
    source = tmp_path / "fold-bn.onnx" if (tmp_path / "fold-bn.onnx").exists() else path
    r = invoke(runner, "quantsim", source, "-o", out, "--data", "random:4", "--json", "-q")
    if r.exit_code:
        one_error_line(r)
        whole_or_absent(out)
    else:
        assert succeeded(r)["opset"] == max(opset, 13)
        onnx.checker.check_model(onnx.load(out), full_check=True)
        assert runs(out, x)[0].shape == ref.shape


@pytest.mark.parametrize("elem", [TensorProto.FLOAT16, TensorProto.BFLOAT16], ids=["float16", "bfloat16"])
def test_half_precision_weights(runner, tmp_path, elem):
    path = save(tmp_path, "half.onnx", half_model(elem))
    out = tmp_path / "f.onnx"
    doc = succeeded(invoke(runner, "fold-bn", path, "-o", out, "--json", "-q"))
    assert doc["remaining_bn"] == 0 and doc["folded"][0]["layer"] == "conv"
    folded = onnx.load(out)
    onnx.checker.check_model(folded, full_check=True)
    assert {t.name: t.data_type for t in folded.graph.initializer} == {"W": elem, "B": elem}
    if elem == TensorProto.FLOAT16:  # onnxruntime has no bfloat16 Conv on CPU
        x = rand(2, 3, 8, 8)
        ref = runs(path, x)[0]
        np.testing.assert_allclose(runs(out, x)[0], ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())
    # quantsim quantizes the model's float32 version (passes/float16_to_float32.py), which
    # onnxruntime also runs for bfloat16 (it has no bfloat16 Conv on CPU)
    sim = tmp_path / "sim.onnx"
    r = invoke(runner, "quantsim", out, "-o", sim, "--data", "random:4", "--json")
    doc = succeeded(r)
    kind = "float16" if elem == TensorProto.FLOAT16 else "bfloat16"
    assert f"computes in {kind}: quantizing its float32 version" in r.output
    assert doc["param_quantizers"] == 1 and doc["activation_quantizers"] >= 1
    sim_model = onnx.load(sim)
    onnx.checker.check_model(sim_model, full_check=True)
    assert {t.data_type for t in sim_model.graph.initializer} <= {TensorProto.FLOAT, TensorProto.INT8,
                                                                 TensorProto.UINT8, TensorProto.INT32}
    assert runs(sim)[0].dtype == np.float32


# ----------------------------------------------------------------------------------
# calibration data
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, make, expect", [
    ("shape.npy", lambda p: np.save(p, np.zeros((4, 5, 8, 8), np.float32)), "expects [N, 3, 8, 8] but the data has"),
    ("rank.npy", lambda p: np.save(p, np.zeros((4, 3, 8), np.float32)), "expects [N, 3, 8, 8]"),
    ("ints.npy", lambda p: np.save(p, np.zeros((4, 3, 8, 8), np.int32)), "is float32 but the data is int32"),
    ("names.npz", lambda p: np.savez(p, a=np.zeros((4, 3, 8, 8), np.float32), b=np.zeros((4, 3, 8, 8), np.float32)),
     "no array for input 'x'"),
    ("zero.npy", lambda p: np.save(p, np.zeros((0, 3, 8, 8), np.float32)), "no samples"),
    ("nan.npy", lambda p: np.save(p, np.full((4, 3, 8, 8), np.nan, np.float32)), "NaN/Inf"),
    ("missing.npy", None, "no such file or directory"),
    ("notdata.txt", lambda p: open(p, "w").write("1 2 3\n"), "unknown data format"),
])
def test_bad_calibration_data(runner, tmp_path, folded, name, make, expect):
    data = tmp_path / name
    if make is not None:
        make(data)
    out = tmp_path / "sim.onnx"
    line = error_case(runner, ["quantsim", folded, "-o", out, "--data", data], [out, tmp_path / "sim.encodings"])
    assert expect in line and name in line
    assert not out.exists() and not (tmp_path / "sim.encodings").exists()


def test_bad_data_for_bias_correct_and_evaluate(runner, tmp_path, folded):
    np.save(tmp_path / "ints.npy", np.zeros((4, 3, 8, 8), np.int64))
    out = tmp_path / "bc.onnx"
    line = error_case(runner, ["bias-correct", folded, "-o", out, "--data", tmp_path / "ints.npy"], [out])
    assert "is float32 but the data is int64" in line
    line = error_case(runner, ["evaluate", folded, "--data", tmp_path / "nothing"], [])
    assert "no such file or directory" in line


@pytest.mark.parametrize("spec", ["random:0", "random:-3", "random:many"])
def test_bad_random_spec_is_usage_error(runner, tmp_path, folded, spec):
    out = tmp_path / "sim.onnx"
    assert "random:N" in error_case(runner, ["quantsim", folded, "-o", out, "--data", spec], [out], code=2)


# ----------------------------------------------------------------------------------
# quantsim config and options
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expect", [
    ('{"defaults": {"ops": {}, "parms": {}}}', "unknown key 'parms' in defaults"),
    ('{"op_type": {"Conv": {"is_output_quantised": "True"}}}', "unknown key 'is_output_quantised' in op_type.Conv"),
    ('{"defaults": {', "not valid JSON"),
    ("", "not valid JSON"),
    ('{"defaults": {"ops": {"is_output_quantized": "yes"}}}', 'must be "True" or "False", not \'yes\''),
    ('{"model_input": {"is_input_quantized": 1}}', 'must be "True" or "False", not 1'),
    ('[1, 2]', "must be an object"),
    ('{"supergroup_pass_list": "MatmulAdd"}', "supergroup_pass_list must be a list of pattern names"),
])
def test_bad_quantsim_config(runner, tmp_path, folded, text, expect):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(text)
    out = tmp_path / "sim.onnx"
    line = error_case(runner, ["quantsim", folded, "-o", out, "--data", "random:4", "--config", cfg],
                      [out, tmp_path / "sim.encodings"])
    assert expect in line
    assert not out.exists()


def test_aimet_2_configs_supergroup_pass_list_is_accepted(tmp_path):
    """AIMET 2.x's shipped configs (htp_quantsim_config_v73.json and later) list fusion patterns
    at the top level; a config that carries the key parses, with the list recorded."""
    from aimetcli.quantsim.config import parse_config

    cfg = parse_config({"defaults": {"ops": {}, "params": {}},
                        "supergroup_pass_list": ["LayerNormalization", "RMSNormalization", "MatmulAdd"]})
    assert cfg.supergroup_passes == ("LayerNormalization", "RMSNormalization", "MatmulAdd")


def test_missing_quantsim_config(runner, tmp_path, folded):
    out = tmp_path / "bc.onnx"
    line = error_case(runner, ["bias-correct", folded, "-o", out, "--method", "analytical", "--config",
                               tmp_path / "nope.json"], [out])
    assert "no such file" in line


def test_encoding_version_2_with_6_bit_weights(runner, tmp_path, folded):
    out = tmp_path / "sim.onnx"
    line = error_case(runner, ["quantsim", folded, "-o", out, "--data", "random:4", "--encoding-version", "2.0.0",
                               "--param-bw", "6"], [out, tmp_path / "sim.encodings"], code=2)
    assert "6-bit" in line and "1.0.0" in line
    assert not out.exists() and not (tmp_path / "sim.encodings").exists()


def test_evaluate_three_models_is_usage_error(runner, tmp_path, model):
    assert "one or two models" in one_error_line(
        invoke(runner, "evaluate", model, model, model, "--data", "random:4"), 2)


@pytest.mark.parametrize("method", ["empirical", "hybrid"])
def test_bias_correct_without_data_is_usage_error(runner, tmp_path, model, method):
    out = tmp_path / "bc.onnx"
    line = error_case(runner, ["bias-correct", model, "-o", out, "--method", method], [out], code=2)
    assert f"--method {method} needs --data" in line
    assert not out.exists()


def test_bias_correct_analytical_without_data_skips_with_reasons(runner, tmp_path, folded):
    """No folded BN statistics: nothing to correct analytically, and --json says why per layer."""
    out = tmp_path / "bc.onnx"
    doc = succeeded(invoke(runner, "bias-correct", folded, "-o", out, "--method", "analytical", "--json", "-q"))
    assert doc["corrected"] == []
    assert doc["skipped"] and all("no BN statistics" in s["reason"] for s in doc["skipped"]), doc["skipped"]
    whole_or_absent(out)


# ----------------------------------------------------------------------------------
# a model that is already quantized
# ----------------------------------------------------------------------------------
def test_already_quantized_model_is_refused_by_quantizing_commands(runner, tmp_path, folded):
    """A sim fed back to quantsim would get its QDQ nodes doubled (onnxruntime then refused it
    with 'two nodes with same node name'); bias-correct and ptq found nothing to do. Each says
    what the model is and where it goes instead; fold-bn and equalize warn and go on."""
    sim = tmp_path / "sim.onnx"
    succeeded(invoke(runner, "quantsim", folded, "-o", sim, "--data", "random:4", "--json", "-q"))
    for args in (("quantsim", sim, "-o", tmp_path / "again.onnx", "--data", "random:4"),
                 ("bias-correct", sim, "-o", tmp_path / "again.onnx", "--data", "random:4"),
                 ("ptq", sim, "-o", tmp_path / "again", "--data", "random:4")):
        line = one_error_line(invoke(runner, *args))
        assert "already quantized" in line and "aimetcli export" in line, line
        assert not (tmp_path / "again.onnx").exists() and not (tmp_path / "again").exists()
    for command in ("fold-bn", "equalize"):
        r = invoke(runner, command, sim, "-o", tmp_path / f"{command}.onnx")
        assert r.exit_code == 0, r.stderr
        assert "Warning: the model is already quantized" in r.stderr
    r = invoke(runner, "export", sim, "-o", tmp_path / "deploy")
    assert r.exit_code == 0 and "already quantized" not in r.stderr, r.stderr
