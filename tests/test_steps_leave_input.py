"""quantsim and export leave the model they are given as it was (issue 17, item 5): quantsim used
to rewrite the caller's onnx-ir model into the sim unless the opset had to be raised (then it
returned a converted copy), and export stripped the QDQ nodes off the caller's sim (and reordered
its initializers, and fixed its batch size). Each test serializes the input before and after."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from aimetcli import api, model_io
from helpers import init, make_model, rand


def mlp(opset: int = 13) -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm, initializers listed out of first-use order (save would reorder them)."""
    inits = [init("B2", rand(5)), init("W2", rand(5, 16)), init("B1", rand(16)), init("W1", rand(16, 12))]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1, name="fc2"),
    ]
    return make_model(nodes, [("x", ["N", 12])], [("y", None)], inits, opset=opset)


def serialized(model: ir.Model) -> bytes:
    return ir.serde.serialize_model(model).SerializeToString()


def loaded(tmp_path, proto: onnx.ModelProto) -> ir.Model:
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    return api.load(str(path))[0]


OPTIONS = api.QuantOptions()
RUN = api.RunOptions(batch_size=8)


@pytest.mark.parametrize("opset", [13, 11])  # 11: the opset is raised for the QDQ nodes
def test_quantsim_leaves_its_input_as_it_was(tmp_path, opset):
    model = loaded(tmp_path, mlp(opset))
    before = serialized(model)
    sim, _, _ = api.quantsim(model, "random:16", OPTIONS, RUN)
    assert sim is not model
    assert serialized(model) == before
    # and the sim is the one quantsim makes of a model it loads itself
    fresh, _, _ = api.quantsim(str(tmp_path / "m.onnx"), "random:16", OPTIONS, RUN)
    assert serialized(sim) == serialized(fresh)


def test_quantsim_of_a_model_read_with_external_data_is_saved_with_it(tmp_path):
    """The sim is a copy, but one that remembers how its model was read: saved beside a .data
    file, as a model read with external data is (model_io.EXTERNAL_META)."""
    path = tmp_path / "m.onnx"
    onnx.save(mlp(), path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.onnx.data",
              size_threshold=0)
    model = api.load(str(path))[0]
    assert model.meta.get(model_io.EXTERNAL_META)
    sim, _, _ = api.quantsim(model, "random:16", OPTIONS, RUN)
    written = api.save(sim, str(tmp_path / "sim.onnx"))
    assert [p.rsplit("/", 1)[-1] for p in written] == ["sim.onnx", "sim.onnx.data"]


@pytest.mark.parametrize("batch_size", [None, 1])
def test_export_leaves_the_sim_as_it_was(tmp_path, batch_size):
    sim, _, _ = api.quantsim(loaded(tmp_path, mlp()), "random:16", OPTIONS, RUN)
    before = serialized(sim)
    api.export(sim, str(tmp_path / "d"), batch_size=batch_size)
    assert serialized(sim) == before
    # and the files are those of the same sim read from disk
    api.save(sim, str(tmp_path / "sim.onnx"))
    api.export(str(tmp_path / "sim.onnx"), str(tmp_path / "e"), batch_size=batch_size)
    for name in ("model.onnx", "model_qdq.onnx", "model.encodings", "report.json"):
        assert (tmp_path / "d" / name).read_bytes() == (tmp_path / "e" / name).read_bytes(), name


def test_export_with_an_encodings_file_leaves_the_fp32_model_as_it_was(tmp_path):
    model = loaded(tmp_path, mlp())
    sim, encodings, _ = api.quantsim(str(tmp_path / "m.onnx"), "random:16", OPTIONS, RUN)
    (tmp_path / "m.encodings").write_text(api.encodings_json(encodings, OPTIONS, "1.0.0"))
    before = serialized(model)
    summary = api.export(model, str(tmp_path / "d"), encodings_path=str(tmp_path / "m.encodings"), batch_size=1)
    assert summary.param_encodings == 2
    assert serialized(model) == before
