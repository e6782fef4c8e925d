"""The facade's steps take a model as a path, an onnx.ModelProto or an onnx-ir model, and data
as a Dataset or a spec; api.py only re-exports."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from aimetcli import api
from helpers import bn_inits, bn_node, init, make_model, op_count, rand, run, to_ir


def conv_bn() -> onnx.ModelProto:
    """The smallest graph with a BatchNormalization to fold: Conv -> BN."""
    return make_model([helper.make_node("Conv", ["x", "W"], ["c"]), bn_node("bn", "c", "y")],
                      [("x", ["N", 3, 4, 4])], [("y", None)], [init("W", rand(4, 3, 1, 1)), *bn_inits("bn", 4)])


def test_fold_bn_takes_a_model_proto():
    """api.fold_bn(onnx.load(path)) failed with "AttributeError: subgraphs": a protobuf was
    taken for an onnx-ir model."""
    proto = conv_bn()
    before = proto.SerializeToString()
    result, summary = api.fold_bn(proto)
    assert len(summary.folded) == 1 and summary.remaining_bn == 0
    assert proto.SerializeToString() == before  # the caller's protobuf is left as it was
    x = rand(2, 3, 4, 4)
    folded = ir.serde.serialize_model(result.model)
    assert op_count(folded, "BatchNormalization") == 0
    np.testing.assert_allclose(run(folded, {"x": x})[0], run(proto, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_a_path_a_proto_and_an_ir_model_fold_alike(tmp_path):
    proto = conv_bn()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    in_place = to_ir(proto)
    folded = [api.fold_bn(src)[0].model for src in (str(path), path, proto, in_place)]
    assert folded[-1] is in_place  # an onnx-ir model is rewritten in place, as a pass does
    names = {tuple(n.op_type for n in m.graph) for m in folded}
    assert names == {("Conv",)}
    weights = [m.graph.initializers["W"].const_value.numpy() for m in folded]
    for w in weights[1:]:
        np.testing.assert_array_equal(w, weights[0])


def test_steps_take_paths_and_data_specs(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn(), path)
    eq = api.equalize(str(path))
    api.save(eq.model, str(tmp_path / "eq.onnx"))
    assert op_count(onnx.load(tmp_path / "eq.onnx"), "BatchNormalization") == 0
    sim, encodings, summary = api.quantsim(str(path), "random:8", api.QuantOptions(), api.RunOptions(batch_size=4))
    assert summary.samples == 8 and summary.batches == 2 and encodings.params
    bc = api.bias_correct(str(path), "random:8", method="empirical")
    assert bc.model is not None and bc.samples == 8
    ev = api.evaluate([str(path), sim], "random:8")
    assert ev.samples == 8 and len(ev.comparisons) == 1


def test_a_model_of_another_type_is_named():
    with pytest.raises(TypeError, match="a path, an onnx.ModelProto or an onnx_ir.Model, not dict"):
        api.fold_bn({})


def test_quant_options_carry_their_config(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"defaults": {"ops": {}, "params": {"is_quantized": "False"}}, "params": {}, '
                   '"op_type": {}, "supergroups": [], "model_input": {}, "model_output": {}}')
    options = api.QuantOptions(config=api.load_config(str(cfg)))
    assert options.as_record()["config"] == str(cfg) and api.QuantOptions().as_record()["config"] == "default"
    _, encodings, _ = api.quantsim(to_ir(conv_bn()), "random:4", options)
    assert not encodings.params  # the config's params.is_quantized False reached placement


def test_api_only_reexports():
    """api.py defines nothing (no def, class or assignment but __all__), and __all__ lists
    exactly what it imports."""
    tree = ast.parse(Path(api.__file__).read_text())
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            imported.update(a.asname or a.name for a in node.names if node.module != "__future__")
        elif isinstance(node, ast.Assign):
            assert [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]
        else:
            assert isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant), ast.dump(node)[:80]
    assert sorted(api.__all__) == sorted(imported) and len(set(api.__all__)) == len(api.__all__)
