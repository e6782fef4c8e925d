"""Calibration data: every source, every validation error, batching rules."""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from aimetcli.calibration.data import (
    ImageOptions,
    InputSpec,
    input_specs,
    open_data,
    parse_floats,
    parse_resize,
)
from aimetcli.errors import AimetCliError, ErrorKind

F32 = np.dtype(np.float32)


def spec(name="input", shape=("N", 1, 4, 4), dtype=F32) -> InputSpec:
    return InputSpec(name, shape, np.dtype(dtype))


def collect(ds, batch_size):
    return list(ds.batches(batch_size))


def data_error(match: str):
    return pytest.raises(AimetCliError, match=match)


def save_npy(tmp_path, arr, name="calib.npy"):
    path = tmp_path / name
    np.save(path, arr)
    return path


def save_npz(tmp_path, name="calib.npz", compressed=False, **arrays):
    path = tmp_path / name
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


# ---------------------------------------------------------------- input_specs


def test_input_specs_from_model_skips_initializers_and_maps_dtypes():
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["s"]), helper.make_node("Identity", ["ids"], ["o"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3, None, 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT16, [4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 7]),
        ],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT16, None),
            helper.make_tensor_value_info("o", TensorProto.INT64, None),
        ],
        [numpy_helper.from_array(np.ones(4, np.float16), "w")],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph))
    specs = input_specs(model)
    assert specs == [
        InputSpec("x", ("batch", 3, None, 4), np.dtype(np.float16)),
        InputSpec("ids", (1, 7), np.dtype(np.int64)),
    ]
    assert specs[0].batch is None and specs[1].batch == 1


def test_input_specs_unknown_shape():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_value_info("x", helper.make_tensor_type_proto(TensorProto.FLOAT, None))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    (s,) = input_specs(ir.serde.deserialize_model(helper.make_model(graph)))
    assert s.shape is None and s.dtype == F32


# ---------------------------------------------------------------- option parsing


@pytest.mark.parametrize("text, want", [("224", (224, 224)), ("224x256", (224, 256)), (" 32 X 16 ", (32, 16)),
                                        ("8,9", (8, 9)), (None, None)])
def test_parse_resize(text, want):
    assert parse_resize(text) == want


@pytest.mark.parametrize("text", ["", "abc", "0", "224x", "1x2x3", "-4", "2.5"])
def test_parse_resize_bad(text):
    with pytest.raises(AimetCliError, match="--resize") as exc:
        parse_resize(text)
    assert exc.value.kind is ErrorKind.USAGE


def test_parse_floats():
    assert parse_floats("0.485,0.456, 0.406") == (0.485, 0.456, 0.406)
    assert parse_floats("1") == (1.0,)
    assert parse_floats(None) is None
    for bad in ["", "a,b", "1,,2", "nan", "inf"]:
        with pytest.raises(AimetCliError, match="--std") as exc:
            parse_floats(bad, "--std")
        assert exc.value.kind is ErrorKind.USAGE


# ---------------------------------------------------------------- .npy


def test_npy_dynamic_batch_keeps_last_partial(tmp_path):
    x = np.arange(10 * 16, dtype=np.float32).reshape(10, 1, 4, 4)
    ds = open_data(str(save_npy(tmp_path, x)), [spec()])
    assert ds.num_samples == 10 and ds.labels is None and ds.fixed_batch is None and ds.notes == []
    feeds = collect(ds, 4)
    assert [f["input"].shape[0] for f in feeds] == [4, 4, 2]
    assert ds.num_batches(4) == 3
    for f in feeds:
        assert f["input"].dtype == np.float32 and f["input"].flags.c_contiguous
        assert not isinstance(f["input"], np.memmap)
    np.testing.assert_array_equal(np.concatenate([f["input"] for f in feeds]), x)
    assert ds.num_batches(100) == 1 and collect(ds, 100)[0]["input"].shape[0] == 10


def test_npy_is_memory_mapped(tmp_path):
    x = np.zeros((3, 1, 4, 4), np.float32)
    ds = open_data(save_npy(tmp_path, x), [spec()])
    assert isinstance(ds._sources[0].array, np.memmap)


def test_fixed_batch_one_ignores_batch_size(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 1, 4, 4)).astype(np.float32)
    ds = open_data(str(save_npy(tmp_path, x)), [spec(shape=(1, 1, 4, 4))])
    assert ds.fixed_batch == 1 and ds.num_batches(32) == 5
    feeds = collect(ds, 32)
    assert [f["input"].shape for f in feeds] == [(1, 1, 4, 4)] * 5
    np.testing.assert_array_equal(np.concatenate([f["input"] for f in feeds]), x)


def test_fixed_batch_drops_last_partial_with_note(tmp_path):
    x = np.ones((7, 1, 4, 4), np.float32)
    ds = open_data(str(save_npy(tmp_path, x)), [spec(shape=(3, 1, 4, 4))])
    assert ds.num_batches(1) == 2
    assert [f["input"].shape[0] for f in collect(ds, 1)] == [3, 3]
    assert any("fixed batch of 3" in n and "last 1 of 7" in n for n in ds.notes)


def test_fixed_batch_larger_than_data(tmp_path):
    with data_error(r"fixed batch of 8 but the data has only 2 samples"):
        open_data(str(save_npy(tmp_path, np.ones((2, 1, 4, 4), np.float32))), [spec(shape=(8, 1, 4, 4))])


def test_bad_batch_size(tmp_path):
    ds = open_data(str(save_npy(tmp_path, np.ones((2, 1, 4, 4), np.float32))), [spec()])
    for bad in (0, -1):
        with pytest.raises(AimetCliError, match="--batch-size") as exc:
            ds.num_batches(bad)
        assert exc.value.kind is ErrorKind.USAGE


def test_num_samples_cap(tmp_path):
    x = np.arange(10 * 16, dtype=np.float32).reshape(10, 1, 4, 4)
    ds = open_data(str(save_npy(tmp_path, x)), [spec()], num_samples=3)
    assert ds.num_samples == 3
    np.testing.assert_array_equal(np.concatenate([f["input"] for f in collect(ds, 2)]), x[:3])
    assert open_data(str(tmp_path / "calib.npy"), [spec()], num_samples=50).num_samples == 10


@pytest.mark.parametrize("n", [0, -3])
def test_num_samples_must_be_positive(tmp_path, n):
    path = save_npy(tmp_path, np.ones((2, 1, 4, 4), np.float32))
    with pytest.raises(AimetCliError, match="--num-samples") as exc:
        open_data(str(path), [spec()], num_samples=n)
    assert exc.value.kind is ErrorKind.USAGE


def test_float64_is_cast_to_input_dtype(tmp_path):
    x = np.random.default_rng(1).standard_normal((4, 1, 4, 4))
    ds = open_data(str(save_npy(tmp_path, x)), [spec()])
    (feed,) = collect(ds, 8)
    assert feed["input"].dtype == np.float32
    np.testing.assert_allclose(feed["input"], x.astype(np.float32))
    ds16 = open_data(str(tmp_path / "calib.npy"), [spec(dtype=np.float16)])
    assert collect(ds16, 8)[0]["input"].dtype == np.float16


def test_float_data_overflowing_float16_input(tmp_path):
    x = np.full((2, 1, 4, 4), 1e6, np.float32)
    with data_error(r"input 'input' is float16 .* values up to 1e\+06"):
        open_data(str(save_npy(tmp_path, x)), [spec(dtype=np.float16)])


def test_shape_mismatch_names_input_expected_and_given(tmp_path):
    path = save_npy(tmp_path, np.ones((1000, 3, 28, 28), np.float32))
    with pytest.raises(AimetCliError) as exc:
        open_data(str(path), [spec(shape=("N", 1, 28, 28))])
    assert exc.value.message == (
        f"--data {path}: input 'input' expects [N, 1, 28, 28] but the data has [1000, 3, 28, 28]"
    )
    assert exc.value.kind is ErrorKind.DATA


def test_rank_mismatch_and_dynamic_dims(tmp_path):
    path = save_npy(tmp_path, np.ones((5, 16), np.float32))
    with data_error(r"input 'input' expects \[N, 1, 4, 4\] but the data has \[5, 16\]"):
        open_data(str(path), [spec()])
    # Symbolic and unknown dims accept anything; a fixed batch dim does not constrain N.
    ds = open_data(str(path), [spec(shape=(1, None))])
    assert ds.num_samples == 5
    ds = open_data(str(path), [spec(shape=("batch", "features"))])
    assert ds.num_samples == 5
    with data_error(r"expects \[N, seq, 8\] but the data has \[5, 16\]"):
        open_data(str(path), [spec(shape=("b", "seq", 8))])


def test_scalar_data(tmp_path):
    with data_error(r"input 'input' expects \[N, 1, 4, 4\] but the data is a scalar"):
        open_data(str(save_npy(tmp_path, np.float32(1))), [spec()])


def test_zero_samples(tmp_path):
    with data_error(r"input 'input' has no samples"):
        open_data(str(save_npy(tmp_path, np.zeros((0, 1, 4, 4), np.float32))), [spec()])


def test_nan_inf_are_counted(tmp_path):
    x = np.ones((6, 1, 4, 4), np.float32)
    x[1, 0, 0, 0] = np.nan
    x[1, 0, 1, 1] = np.inf
    x[4, 0, 2, 2] = -np.inf
    with data_error(r"input 'input' has 3 NaN/Inf values \(in 2 samples\)"):
        open_data(str(save_npy(tmp_path, x)), [spec()])
    # The cap is applied first: the first sample is clean.
    assert open_data(str(tmp_path / "calib.npy"), [spec()], num_samples=1).num_samples == 1


def test_nan_scan_in_chunks(tmp_path, monkeypatch):
    import aimetcli.calibration.checks as checks

    monkeypatch.setattr(checks, "_SCAN_CHUNK", 20)  # one sample (16 values) per chunk
    x = np.ones((5, 1, 4, 4), np.float32)
    x[3, 0, 0, :] = np.nan
    with data_error(r"4 NaN/Inf values \(in 1 samples\)"):
        open_data(str(save_npy(tmp_path, x)), [spec()])


def test_integer_data_for_float_input(tmp_path):
    path = save_npy(tmp_path, np.ones((2, 1, 4, 4), np.int32))
    with data_error(r"input 'input' is float32 but the data is int32"):
        open_data(str(path), [spec()])


def test_float_data_for_integer_input(tmp_path):
    path = save_npy(tmp_path, np.ones((2, 7), np.float32))
    with data_error(r"input 'ids' is int64 but the data is float32"):
        open_data(str(path), [spec("ids", ("N", 7), np.int64)])


def test_integer_widths_are_cast(tmp_path):
    ids = np.arange(14, dtype=np.int32).reshape(2, 7)
    ds = open_data(str(save_npy(tmp_path, ids)), [spec("ids", ("N", 7), np.int64)])
    (feed,) = collect(ds, 2)
    assert feed["ids"].dtype == np.int64
    np.testing.assert_array_equal(feed["ids"], ids)
    big = save_npy(tmp_path, np.full((2, 7), 300, np.int64), "big.npy")
    with data_error(r"input 'ids' is int8 .* \[300, 300\]"):
        open_data(str(big), [spec("ids", ("N", 7), np.int8)])


def test_npy_for_two_inputs(tmp_path):
    path = save_npy(tmp_path, np.ones((2, 3), np.float32))
    with data_error(r"feeds one input but the model has 2 \('a', 'b'\)"):
        open_data(str(path), [spec("a", ("N", 3)), spec("b", ("N", 3))])


def test_corrupt_npy(tmp_path):
    path = tmp_path / "bad.npy"
    path.write_bytes(b"not numpy at all")
    with pytest.raises(AimetCliError, match=r"not a valid \.npy file") as exc:
        open_data(str(path), [spec()])
    assert "\n" not in exc.value.message and exc.value.kind is ErrorKind.DATA
    truncated = tmp_path / "trunc.npy"
    truncated.write_bytes(save_npy(tmp_path, np.ones((4, 1, 4, 4), np.float32)).read_bytes()[:-10])
    with data_error(r"not a valid \.npy file"):
        open_data(str(truncated), [spec()])


def test_object_npy_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with data_error(r"holds Python objects .*pickle.*; save a numeric array instead") as exc:
        open_data(str(path), [spec()])
    assert "save it with numpy.save" not in exc.value.message


# ---------------------------------------------------------------- .npz


TWO = [spec("a", ("N", 3)), spec("b", ("N", 2, 2))]


def two_arrays(n=5):
    rng = np.random.default_rng(2)
    return rng.standard_normal((n, 3)).astype(np.float32), rng.standard_normal((n, 2, 2))


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_two_inputs_with_labels(tmp_path, compressed):
    a, b = two_arrays()
    path = save_npz(tmp_path, compressed=compressed, a=a, b=b, labels=np.arange(5), extra=np.zeros(2))
    ds = open_data(str(path), TWO)
    np.testing.assert_array_equal(ds.labels, np.arange(5))
    assert ds.labels.dtype == np.int64
    feeds = collect(ds, 2)
    assert [sorted(f) for f in feeds] == [["a", "b"]] * 3
    assert feeds[0]["b"].dtype == np.float32  # float64 -> float32
    np.testing.assert_array_equal(np.concatenate([f["a"] for f in feeds]), a)
    np.testing.assert_allclose(np.concatenate([f["b"] for f in feeds]), b.astype(np.float32))
    assert isinstance(ds._sources[0].array, np.memmap) is (not compressed)


def test_npz_label_key_detection_order(tmp_path):
    x = np.ones((4, 3), np.float32)
    for key in ("label", "labels", "y"):
        path = save_npz(tmp_path, f"{key}.npz", x=x, **{key: np.array([3, 1, 2, 0])})
        np.testing.assert_array_equal(open_data(str(path), [spec("x", ("N", 3))]).labels, [3, 1, 2, 0])
    path = save_npz(tmp_path, "none.npz", x=x)
    assert open_data(str(path), [spec("x", ("N", 3))]).labels is None
    # An input named 'y' is an input, not labels.
    path = save_npz(tmp_path, "y_input.npz", y=x)
    assert open_data(str(path), [spec("y", ("N", 3))]).labels is None


def test_npz_labels_key(tmp_path):
    x = np.ones((4, 3), np.float32)
    path = save_npz(tmp_path, x=x, target=np.array([[1], [2], [3], [4]], np.int16))
    ds = open_data(str(path), [spec("x", ("N", 3))], labels_key="target", num_samples=2)
    np.testing.assert_array_equal(ds.labels, [1, 2])
    with data_error(r"no labels array 'cls'; the file holds 'x', 'target'"):
        open_data(str(path), [spec("x", ("N", 3))], labels_key="cls")


def test_npz_bad_labels(tmp_path):
    x = np.ones((4, 3), np.float32)
    inp = [spec("x", ("N", 3))]
    with data_error(r"labels 'labels' has 3 entries but the data has 4 samples"):
        open_data(str(save_npz(tmp_path, "a.npz", x=x, labels=np.arange(3))), inp)
    b = str(save_npz(tmp_path, "b.npz", x=x, labels=np.zeros((4, 10))))
    with data_error(r"labels 'labels' has shape \[4, 10\]"):
        open_data(b, inp, labels_key="labels")
    # found under a usual key but not one index per sample (one-hot, per-pixel): left out, said in a note
    ds = open_data(b, inp)
    assert ds.labels is None and "'labels' of shape [4, 10]" in ds.labels_note
    with data_error(r"non-integer"):
        open_data(str(save_npz(tmp_path, "c.npz", x=x, labels=np.array([0.5, 1, 2, 3]))), inp)
    ds = open_data(str(save_npz(tmp_path, "d.npz", x=x, labels=np.array([0.0, 1, 2, 3]))), inp)
    assert ds.labels.dtype == np.int64


def test_npz_single_input_friendly_rule(tmp_path):
    x = np.ones((4, 1, 4, 4), np.float32)
    path = save_npz(tmp_path, data=x, y=np.arange(4))
    ds = open_data(str(path), [spec()])
    assert ds.num_samples == 4 and ds.labels is not None
    assert any("no array named 'input'" in w and "'data'" in w for w in ds.warnings)
    assert collect(ds, 4)[0]["input"].shape == (4, 1, 4, 4)


def test_npz_missing_input(tmp_path):
    a, b = two_arrays()
    path = save_npz(tmp_path, a=a, c=b)
    with data_error(r"no array for input 'b'; the file holds 'a', 'c'"):
        open_data(str(path), TWO)
    # One input but two candidate arrays: ambiguous.
    path = save_npz(tmp_path, "two.npz", p=a, q=a)
    with data_error(r"no array for input 'x'; the file holds 'p', 'q'"):
        open_data(str(path), [spec("x", ("N", 3))])


def test_npz_sample_counts_differ(tmp_path):
    a, _ = two_arrays(5)
    _, b = two_arrays(6)
    with data_error(r"'a' has 5, 'b' has 6"):
        open_data(str(save_npz(tmp_path, a=a, b=b)), TWO)


def test_npz_shape_error_names_input(tmp_path):
    a, _ = two_arrays()
    path = save_npz(tmp_path, a=a, b=np.ones((5, 3, 2)))
    with data_error(r"input 'b' expects \[N, 2, 2\] but the data has \[5, 3, 2\]"):
        open_data(str(path), TWO)


def test_npz_zero_samples_and_nan(tmp_path):
    with data_error(r"input 'a' has no samples"):
        open_data(str(save_npz(tmp_path, "z.npz", a=np.ones((0, 3)), b=np.ones((0, 2, 2)))), TWO)
    a, b = two_arrays()
    b[2, 1, 1] = np.nan
    with data_error(r"input 'b' has 1 NaN/Inf values"):
        open_data(str(save_npz(tmp_path, "n.npz", a=a, b=b)), TWO)


def test_corrupt_npz(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(AimetCliError, match=r"not a valid \.npz file") as exc:
        open_data(str(path), [spec()])
    assert "\n" not in exc.value.message
    # A valid zip whose member is not an .npy array.
    path = tmp_path / "badmember.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("input.npy", b"junk junk junk")
    with data_error(r"array 'input' cannot be read"):
        open_data(str(path), [spec()])
    path = tmp_path / "empty.npz"
    np.savez(path)
    with data_error(r"holds no arrays"):
        open_data(str(path), [spec()])


def test_npz_labels_key_on_npy_is_usage_error(tmp_path):
    path = save_npy(tmp_path, np.ones((2, 1, 4, 4), np.float32))
    with pytest.raises(AimetCliError) as exc:
        open_data(str(path), [spec()], labels_key="y")
    assert exc.value.kind is ErrorKind.USAGE


# ---------------------------------------------------------------- spec errors


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(AimetCliError) as exc:
        open_data(str(missing), [spec()])
    assert exc.value.message == f"--data {missing}: no such file or directory"
    assert exc.value.kind is ErrorKind.DATA


def test_unknown_extension(tmp_path):
    path = tmp_path / "calib.csv"
    path.write_text("1,2,3\n")
    with data_error(r"calib.csv: unknown data format '.csv'; accepted: .npy .*\.npz .*directory of images.*random:N"):
        open_data(str(path), [spec()])


# ---------------------------------------------------------------- random:N


def test_random_is_deterministic_and_batch_independent():
    inputs = [spec("a", (1, 3, 4)), spec("b", ("N", 2), np.float16)]
    one = open_data("random:6", inputs, seed=3)
    assert one.num_samples == 6 and one.labels is None and one.fixed_batch == 1
    feeds = collect(one, 4)
    assert len(feeds) == 6 and feeds[0]["a"].shape == (1, 3, 4) and feeds[0]["b"].dtype == np.float16
    a = np.concatenate([f["a"] for f in feeds])
    again = np.concatenate([f["a"] for f in collect(open_data("random:6", inputs, seed=3), 1)])
    np.testing.assert_array_equal(a, again)
    other = np.concatenate([f["a"] for f in collect(open_data("random:6", inputs, seed=4), 1)])
    assert not np.array_equal(a, other)
    assert a.dtype == np.float32 and 0.3 < a.std() < 2.0
    # Dynamic batch: batch sizes and the cap do not change the samples.
    dyn = [spec("a", ("N", 3, 4))]
    full = np.concatenate([f["a"] for f in collect(open_data("random:6", dyn, seed=3), 4)])
    capped = np.concatenate([f["a"] for f in collect(open_data("random:6", dyn, seed=3, num_samples=2), 1)])
    np.testing.assert_array_equal(full[:2], capped)
    np.testing.assert_array_equal(full, a)


def test_random_dynamic_dim_error():
    with data_error(r"input 'x' \[N, 3, H, W\] has dynamic dim 2 \(H\).*give a data file"):
        open_data("random:4", [spec("x", ("N", 3, "H", "W"))])
    with data_error(r"input 'x' has no declared shape"):
        open_data("random:4", [spec("x", None)])


def test_random_bad_count_and_integer_input():
    for bad in ("random:0", "random:x", "random:"):
        with pytest.raises(AimetCliError, match="random:N") as exc:
            open_data(bad, [spec()])
        assert exc.value.kind is ErrorKind.USAGE
    with data_error(r"input 'ids' is int64; random data only feeds float inputs"):
        open_data("random:2", [spec("ids", ("N", 7), np.int64)])


# ---------------------------------------------------------------- images


def write_image(path, hw=(6, 8), color=(255, 0, 0), mode="RGB"):
    pil = pytest.importorskip("PIL.Image")
    h, w = hw
    if mode == "L":
        arr = np.full((h, w), color, np.uint8)
    else:
        arr = np.broadcast_to(np.asarray(color, np.uint8), (h, w, 3)).copy()
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.fromarray(arr, mode=None).save(path)


def test_image_dir_flat_nchw_with_model_size(tmp_path):
    pytest.importorskip("PIL")
    write_image(tmp_path / "imgs" / "b.png", color=(0, 255, 0))
    write_image(tmp_path / "imgs" / "a.jpg", hw=(20, 30), color=(255, 255, 255))
    write_image(tmp_path / "imgs" / "c.bmp", color=(0, 0, 255))
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    ds = open_data(str(tmp_path / "imgs"), [spec("img", ("N", 3, 4, 5))])
    assert ds.num_samples == 3 and ds.labels is None
    feeds = collect(ds, 2)
    assert [f["img"].shape for f in feeds] == [(2, 3, 4, 5), (1, 3, 4, 5)]
    x = np.concatenate([f["img"] for f in feeds])
    assert x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0], 1.0, atol=0.02)  # a.jpg: white (sorted first)
    np.testing.assert_allclose(x[1, 1], 1.0)  # b.png: green channel
    np.testing.assert_allclose(x[1, [0, 2]], 0.0)
    np.testing.assert_allclose(x[2, 2], 1.0)  # c.bmp: blue


def test_image_class_subfolders_give_labels(tmp_path):
    pytest.importorskip("PIL")
    root = tmp_path / "data"
    for cls, n in (("cat", 3), ("dog", 1), ("emu", 2)):
        for i in range(n):
            write_image(root / cls / f"{i}.png")
    (root / "fox").mkdir()  # an empty class keeps its index
    ds = open_data(str(root), [spec("img", ("N", 3, 6, 8))])
    # Sorted classes cat=0, dog=1, emu=2, fox=3; interleaved so that a cap spans classes.
    np.testing.assert_array_equal(ds.labels, [0, 1, 2, 0, 2, 0])
    assert any("4 class subfolders" in n for n in ds.notes)
    capped = open_data(str(root), [spec("img", ("N", 3, 6, 8))], num_samples=3)
    np.testing.assert_array_equal(capped.labels, [0, 1, 2])
    assert sum(f["img"].shape[0] for f in capped.batches(2)) == 3


def test_image_resize_mean_std_nhwc(tmp_path):
    pytest.importorskip("PIL")
    write_image(tmp_path / "i" / "x.png", hw=(10, 10), color=(255, 51, 0))
    opts = ImageOptions(resize=(4, 6), mean=(0.5, 0.5, 0.5), std=(0.5, 0.2, 1.0), layout="NHWC")
    ds = open_data(str(tmp_path / "i"), [spec("img", ("N", "h", "w", 3))], images=opts)
    (feed,) = collect(ds, 8)
    assert feed["img"].shape == (1, 4, 6, 3)
    np.testing.assert_allclose(feed["img"][0, 0, 0], [(1 - 0.5) / 0.5, (0.2 - 0.5) / 0.2, -0.5], rtol=1e-5)


def test_image_grayscale_and_float16(tmp_path):
    pytest.importorskip("PIL")
    write_image(tmp_path / "i" / "x.png", color=(255, 255, 255))
    opts = ImageOptions(grayscale=True, mean=(0.5,), std=(0.25,))
    ds = open_data(str(tmp_path / "i"), [spec("img", ("N", 1, 3, 3), np.float16)], images=opts)
    (feed,) = collect(ds, 1)
    assert feed["img"].shape == (1, 1, 3, 3) and feed["img"].dtype == np.float16
    np.testing.assert_allclose(feed["img"], 2.0)
    # A one-channel model gets grayscale without asking, with a note.
    ds = open_data(str(tmp_path / "i"), [spec("img", (1, 1, 3, 3))])
    assert any("grayscale" in n for n in ds.notes) and ds.fixed_batch == 1
    assert collect(ds, 4)[0]["img"].shape == (1, 1, 3, 3)


def test_image_errors(tmp_path):
    pytest.importorskip("PIL")
    root = tmp_path / "i"
    write_image(root / "x.png")
    with pytest.raises(AimetCliError, match="--resize") as exc:
        open_data(str(root), [spec("img", ("N", 3, "H", "W"))])
    assert exc.value.kind is ErrorKind.USAGE
    with pytest.raises(AimetCliError, match="--layout") as exc:
        open_data(str(root), [spec("img", ("N", 3, 4, 4))], images=ImageOptions(layout="CHW"))
    assert exc.value.kind is ErrorKind.USAGE
    with pytest.raises(AimetCliError, match="--mean has 2 values") as exc:
        open_data(str(root), [spec("img", ("N", 3, 4, 4))], images=ImageOptions(mean=(0.1, 0.2)))
    with pytest.raises(AimetCliError, match="--std") as exc:
        open_data(str(root), [spec("img", ("N", 3, 4, 4))], images=ImageOptions(std=(0.0,)))
    assert exc.value.kind is ErrorKind.USAGE
    with data_error(r"input 'img' expects \[N, 3, 4, 4\] but the data has \[1, 3, 5, 5\]"):
        open_data(str(root), [spec("img", ("N", 3, 4, 4))], images=ImageOptions(resize=(5, 5)))
    nhwc_hint = r"expects \[N, 4, 4, 3\] but the data has \[1, 3, 4, 3\]; the model looks NHWC: give --layout NHWC"
    with data_error(nhwc_hint):
        open_data(str(root), [spec("img", ("N", 4, 4, 3))])
    with data_error(r"input 'img' is int64; images are fed as float"):
        open_data(str(root), [spec("img", ("N", 3, 4, 4), np.int64)])
    with data_error(r"feeds one input but the model has 2"):
        open_data(str(root), TWO)
    with pytest.raises(AimetCliError) as exc:
        open_data(str(root), [spec("img", ("N", 3, 4, 4))], labels_key="y")
    assert exc.value.kind is ErrorKind.USAGE


def test_image_dir_layout_problems(tmp_path):
    pytest.importorskip("PIL")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with data_error(r"no images \(.png, .jpg"):
        open_data(str(empty), [spec("img", ("N", 3, 4, 4))])
    mixed = tmp_path / "mixed"
    write_image(mixed / "top.png")
    write_image(mixed / "cls" / "a.png")
    with data_error(r"holds 1 images beside class subfolders"):
        open_data(str(mixed), [spec("img", ("N", 3, 4, 4))])


def test_corrupt_image_fails_when_the_folder_is_opened(tmp_path):
    """Every image's header is read when the folder is opened (its size decides the squash
    warning), so an undecodable file is an error before any work, not after the first batches."""
    pytest.importorskip("PIL")
    root = tmp_path / "i"
    write_image(root / "a.png")
    (root / "b.png").write_bytes(b"not a png")
    with data_error(r"cannot decode image .*b\.png"):
        open_data(str(root), [spec("img", ("N", 3, 4, 4))])
    # a --num-samples cap leaves it out
    assert open_data(str(root), [spec("img", ("N", 3, 4, 4))], num_samples=1).num_samples == 1


def test_pillow_missing(tmp_path, monkeypatch):
    root = tmp_path / "i"
    root.mkdir()
    (root / "a.png").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(AimetCliError) as exc:
        open_data(str(root), [spec("img", ("N", 3, 4, 4))])
    assert "pip install 'aimetcli[images]'" in exc.value.message
    assert exc.value.kind is ErrorKind.DATA


# ---------------------------------------------------------------- end to end with onnxruntime


def test_feeds_run_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    inputs = input_specs(ir.serde.deserialize_model(proto))
    x = np.random.default_rng(0).standard_normal((3, 3, 2))
    ds = open_data(str(save_npy(tmp_path, x)), inputs)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [sess.run(None, feed)[0] for feed in ds.batches(16)]
    np.testing.assert_allclose(np.array(outs), x.sum(axis=(1, 2)).astype(np.float32), rtol=1e-5)
