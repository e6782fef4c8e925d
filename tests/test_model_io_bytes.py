"""model_io keeps big weights out of protobuf: same models, same bytes, same errors as the plain path."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from aimetcli import api, model_io, proto_wire
from aimetcli.bn_stats import store_bn_stats
from aimetcli.errors import AimetCliError
from helpers import init, make_model, rand, to_ir, two_conv_classifier


def _model(dtype=np.float32) -> onnx.ModelProto:
    nodes, inits = two_conv_classifier(32, dtype)
    inits.append(init("big_int", np.arange(2000, dtype=np.int64)))
    nodes.append(helper.make_node("Gather", ["big_int", "idx"], ["picked"]))
    proto = make_model(nodes, [("input", ["N", 3, 16, 16]), ("idx", [1])], [("logits", None), ("picked", None)],
                       inits)
    proto.graph.input[1].type.tensor_type.elem_type = onnx.TensorProto.INT64
    onnx.checker.check_model(proto)
    return proto


@pytest.fixture(autouse=True)
def wire_path_for_small_models(monkeypatch):
    """These models are a few KB: below proto_wire.MIN_MODEL_BYTES they would take the plain path."""
    monkeypatch.setattr(proto_wire, "MIN_MODEL_BYTES", 0)


def _plain_load(data: bytes, source: str) -> ir.Model:
    model = model_io._load(data, None, source, True)
    assert model is not None
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_big_weights_are_read_only_views_with_the_same_values(tmp_path, dtype):
    proto = _model(dtype)
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    model = model_io.load_model(str(path)).model
    expected = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    lifted = []
    for name, value in model.graph.initializers.items():
        array = value.const_value.numpy()
        assert array.dtype == expected[name].dtype and np.array_equal(array, expected[name]), name
        if type(value.const_value) is ir.Tensor:
            assert not array.flags.writeable, name
            lifted.append(name)
    assert {"W2", "W3", "big_int"} <= set(lifted)  # > 4 KB, plain raw_data
    assert "shape" not in lifted and "bn1_g" not in lifted  # small ones stay in protobuf form
    # everything else as the plain path sees it: shapes, graph, serialization
    plain = _plain_load(path.read_bytes(), str(path))
    assert model_io.serialize(model) == ir.serde.serialize_model(plain).SerializeToString()


def test_saved_bytes_are_what_protobuf_writes(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    model, _ = api.prepare(model_io.load_model(str(path)).model)
    api.fold_bn(model)
    model_io.canonical_order(model)
    store_bn_stats(model)  # as saving does first
    expected = ir.serde.serialize_model(model).SerializeToString()
    assert model_io.serialize(model) == expected
    out = tmp_path / "out.onnx"
    model_io.save_model(model, str(out))
    assert out.read_bytes() == expected
    # the model is unchanged by saving: the streamed tensors are back in place
    assert model_io.serialize(model) == expected
    assert all(v.const_value is not None and v.const_value.size > 0 for v in model.graph.initializers.values()
               if v.name in ("W2", "W3"))


def _mutations():
    def big(p):
        return next(t for t in p.graph.initializer if t.name == "W2")

    yield "ok", lambda p: None
    yield "unknown op", lambda p: setattr(p.graph.node[2], "op_type", "NoSuchOp")
    yield "raw_data too small for dims", lambda p: big(p).dims.__setitem__(0, 64)
    yield "0-element with data", lambda p: big(p).dims.__setitem__(0, 0)
    yield "undefined type", lambda p: setattr(big(p), "data_type", 0)
    yield "string in raw_data", lambda p: setattr(big(p), "data_type", onnx.TensorProto.STRING)
    yield "two value fields", lambda p: big(p).float_data.append(1.0)
    yield "no name", lambda p: big(p).ClearField("name")
    yield "duplicate name", lambda p: p.graph.initializer.append(copy.deepcopy(big(p)))
    yield "IR 3, initializer not an input", lambda p: setattr(p, "ir_version", 3)


@pytest.mark.parametrize("name,mutate", list(_mutations()), ids=[n for n, _ in _mutations()])
def test_checker_sees_the_same_model(tmp_path, name, mutate):
    proto = _model()
    mutate(proto)
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    outcomes = []
    for load in (lambda: model_io.load_model(str(path)).model, lambda: _plain_load(path.read_bytes(), str(path))):
        try:
            outcomes.append(model_io.serialize(load()))
        except AimetCliError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]
    assert (name == "ok") == isinstance(outcomes[0], bytes)


def test_duplicate_names_unchecked_load_like_onnx_ir(tmp_path):
    proto = _model()
    w2 = next(t for t in proto.graph.initializer if t.name == "W2")
    twin = onnx.numpy_helper.from_array(np.zeros((32, 32, 3, 3), np.float32), "W2")
    proto.graph.initializer.insert(list(proto.graph.initializer).index(w2), twin)
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    model = model_io.load_model(str(path), check=False).model
    expected = ir.serde.deserialize_model(proto).graph.initializers["W2"].const_value.numpy()
    assert np.array_equal(model.graph.initializers["W2"].const_value.numpy(), expected)


def test_truncated_file_is_reported_as_before(tmp_path):
    path = tmp_path / "m.onnx"
    data = _model().SerializeToString()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(AimetCliError, match="not an ONNX model"):
        model_io.load_model(str(path))


def _big_model(tmp_path):
    proto = _model()
    big = onnx.numpy_helper.from_array(rand(512, 1024), "unused_big")  # 2 MB: preallocated on save
    proto.graph.initializer.append(big)
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    return model_io.load_model(str(path)).model


def test_preallocation_refusing_space_is_an_output_error_without_partial_file(tmp_path, monkeypatch):
    import errno
    import os

    model = _big_model(tmp_path)

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    with pytest.raises(AimetCliError, match="cannot be written .No space left on device"):
        model_io.save_model(model, str(out))
    assert list(out.parent.iterdir()) == []


def test_preallocation_unsupported_still_writes(tmp_path, monkeypatch):
    import errno
    import os

    model = _big_model(tmp_path)

    def unsupported(fd, offset, size):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    out = tmp_path / "o.onnx"
    model_io.save_model(model, str(out))
    assert out.read_bytes() == ir.serde.serialize_model(model).SerializeToString()


def test_sessions_of_edited_copies_equal_plain_protobuf_sessions(tmp_path):
    """Graphs built for onnxruntime are onnx-ir copies of the model (graph_builder: tensors shared,
    some replaced, tensors exposed) whose big weights the session keeps out of protobuf
    (SplicedProto): that session computes what the session of the same graph written as a plain
    protobuf computes, and the model copied is left as it was."""
    from aimetcli import big_tensors, graph_builder, runtime

    dtype = np.float32
    proto = _model(dtype)
    proto.graph.output[1].type.tensor_type.elem_type = onnx.TensorProto.INT64  # Gather of int64
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    model = model_io.load_model(str(path)).model
    doubled = {}

    def double(name: str, tensor):
        arr = tensor.numpy()
        if arr.dtype.kind == "f" and arr.ndim == 4:
            doubled[name] = arr * 2
            return ir.Tensor(doubled[name], name=name)
        return None

    edited = graph_builder.expose(graph_builder.editable_copy(model, double), [proto.graph.node[0].output[0]])
    spliced = big_tensors.SplicedProto.of(edited)
    # big tensors set aside (replaced or not), small ones replaced inside the protobuf
    assert {"W2", "big_int"} <= set(spliced.arrays) and "W1" in doubled and "W1" not in spliced.arrays
    assert all(len(t.raw_data) == 0 for t in spliced.proto.graph.initializer if t.name in spliced.arrays)
    assert np.array_equal(spliced.arrays["W2"], doubled["W2"])
    small = next(t for t in spliced.proto.graph.initializer if t.name == "W1")
    assert np.array_equal(onnx.numpy_helper.to_array(small), doubled["W1"])
    assert not np.array_equal(model.graph.initializers["W1"].const_value.numpy(), doubled["W1"])
    assert len(model.graph.outputs) == len(proto.graph.output)
    # the same edit, written the plain way
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    plain = onnx.ModelProto()
    plain.CopyFrom(proto)
    for t in plain.graph.initializer:
        if t.name in doubled:
            t.CopyFrom(onnx.numpy_helper.from_array(doubled[t.name], t.name))
    plain.graph.output.append(helper.make_tensor_value_info(proto.graph.node[0].output[0], elem, None))
    feeds = {"input": rand(2, 3, 16, 16).astype(dtype), "idx": np.array([7], np.int64)}
    got = runtime.Session(edited, runtime.SIMULATE).run(feeds)
    want = runtime.Session(plain.SerializeToString(), runtime.SIMULATE).run(feeds)
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, want))
    original = runtime.Session(model, runtime.SIMULATE).run(feeds)
    assert not np.array_equal(original[0], got[0])  # the doubled weights were used, not the model's


def test_sessions_do_not_prepack_big_gemm_weights(monkeypatch):
    """Past runtime.PREPACK_LIMIT bytes of Gemm/MatMul weights a session skips onnxruntime's
    prepacked weight copy and feeds those weights with every run instead of handing them over as
    initializers (which onnxruntime copies); conv weights do not count. The outputs stay the model's."""
    from aimetcli import runtime

    gemm = to_ir(make_model([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], [("x", ["N", 64])],
                            [("y", None)], [init("W", rand(32, 64))]))
    conv = to_ir(make_model([helper.make_node("Conv", ["x", "W"], ["y"])], [("x", ["N", 8, 6, 6])],
                            [("y", None)], [init("W", rand(32, 8, 3, 3))]))
    x = {"x": rand(4, 64)}

    def prepacking_off(model) -> bool:
        return not runtime.Session(model, runtime.FOLD_CONSTANTS).prepacks

    assert not prepacking_off(gemm) and not prepacking_off(conv)  # 8 KB of weights: under the limit
    expected = runtime.Session(gemm, runtime.FOLD_CONSTANTS).run(x)[0]
    monkeypatch.setattr(runtime, "PREPACK_LIMIT", 1024)
    assert prepacking_off(gemm) and not prepacking_off(conv)
    # and the big Gemm weight is fed with every run (onnxruntime copies initializers it is given)
    sess = runtime.Session(gemm, runtime.FOLD_CONSTANTS)
    assert set(sess.fed) == {"W"} and "W" in sess.input_names
    assert not runtime.Session(conv, runtime.FOLD_CONSTANTS).fed
    np.testing.assert_allclose(sess.run(x)[0], expected, rtol=1e-5, atol=1e-6)


def _fc_chain(path, external: bool = True) -> None:
    """Gemm -> Relu -> Gemm -> Relu -> Gemm with unequal channel ranges, weights in external data."""
    w1 = rand(64, 32) * np.geomspace(0.05, 20, 64, dtype=np.float32)[:, None]
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["g1"], transB=1), helper.make_node("Relu", ["g1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "W2", "B2"], ["g2"], transB=1), helper.make_node("Relu", ["g2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "W3"], ["y"], transB=1)]
    proto = make_model(nodes, [("x", ["N", 32])], [("y", None)],
                       [init("W1", w1), init("B1", rand(64)), init("W2", rand(48, 64)), init("B2", rand(48)),
                        init("W3", rand(10, 48))])
    onnx.save(proto, path, save_as_external_data=external, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)


def test_big_external_data_is_mapped_copy_on_write(tmp_path, monkeypatch):
    """Over the in-memory limit external tensors are mapped privately: writable in place (no copy
    for a pass to make), the file never changes, and equalize writes what it writes from memory."""
    from click.testing import CliRunner

    from aimetcli.cli import main

    src = tmp_path / "m.onnx"
    _fc_chain(src)
    data_before = (tmp_path / "m.onnx.data").read_bytes()
    r = CliRunner().invoke(main, ["equalize", str(src), "-o", str(tmp_path / "mem.onnx")])
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(model_io, "IN_MEMORY_LIMIT", 0)
    model = model_io.load_model(str(src)).model
    w = model.graph.initializers["W2"].const_value.numpy()
    assert isinstance(w, np.ndarray) and w.flags.writeable and not w.flags.owndata
    w *= 3.0  # in place, as cross-layer scaling scales a weight it alone reads
    assert (tmp_path / "m.onnx.data").read_bytes() == data_before
    r = CliRunner().invoke(main, ["equalize", str(src), "-o", str(tmp_path / "cow.onnx")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.onnx.data").read_bytes() == data_before
    a, b = onnx.load(tmp_path / "mem.onnx"), onnx.load(tmp_path / "cow.onnx")
    ta = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    tb = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert not np.array_equal(ta["W2"], onnx.numpy_helper.to_array(
        next(t for t in onnx.load(src).graph.initializer if t.name == "W2")))  # equalize did scale


def test_fed_weights_of_a_model_that_lists_initializers_as_inputs(monkeypatch):
    """Models before IR 4 list their initializers among the graph inputs: a fed weight is then
    already an input, and must not be declared twice."""
    from aimetcli import runtime

    proto = make_model([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], [("x", ["N", 64])],
                       [("y", None)], [init("W", rand(32, 64))])
    proto.graph.input.append(helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [32, 64]))
    model = to_ir(proto)
    x = {"x": rand(4, 64)}
    expected = runtime.Session(model, runtime.FOLD_CONSTANTS).run(x)[0]
    monkeypatch.setattr(runtime, "PREPACK_LIMIT", 1024)
    sess = runtime.Session(model, runtime.FOLD_CONSTANTS)
    assert set(sess.fed) == {"W"} and sess.input_names.count("W") == 1
    np.testing.assert_allclose(sess.run(x)[0], expected, rtol=1e-5, atol=1e-6)


def test_models_below_the_size_gate_take_the_plain_protobuf_path(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    size = path.stat().st_size
    weights = model_io.tensor_bytes(model_io.load_model(str(path)).model)  # what the save gate counts
    assert weights < size
    outcomes = {}
    for gate in (size + 1, weights):  # above the file: plain; at its weights' size: lifted and spliced
        monkeypatch.setattr(proto_wire, "MIN_MODEL_BYTES", gate)
        model = model_io.load_model(str(path)).model
        views = [n for n, v in model.graph.initializers.items() if type(v.const_value) is ir.Tensor]
        chunks = model_io.serialize_chunks(model)
        outcomes[gate] = (views, len(chunks), b"".join(bytes(memoryview(c).cast("B")) for c in chunks))
    assert outcomes[size + 1][:2] == ([], 1)  # no views of the file, one serialized piece
    assert {"W2", "W3", "big_int"} <= set(outcomes[weights][0]) and outcomes[weights][1] > 1
    assert outcomes[size + 1][2] == outcomes[weights][2]
