"""quantize / dequantize / fake_quantize against onnxruntime's QDQ, bit for bit; AIMET's range formulas."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from aimetcli.encodings import output_dtype
from aimetcli.kernels.quant import (
    AIMET_MIN_RANGE,
    Encoding,
    container_bits,
    dequantize,
    encoding_from_range,
    fake_quantize,
    minimum_scale,
    quantize,
)
from aimetcli.kernels.range_search import percentile_range, tf_enhanced_encoding, tf_enhanced_range

ONNX_TYPES = {
    "int4": TensorProto.INT4, "uint4": TensorProto.UINT4,
    "int8": TensorProto.INT8, "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16, "uint16": TensorProto.UINT16,
}
NP_TYPES = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16}
N_VALUES = 100_000


# ----------------------------------------------------------------------------------
# onnxruntime reference
# ----------------------------------------------------------------------------------
def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=None)
def _qdq_runtime_params(dtype: str, per_channel_axis: int | None) -> ort.InferenceSession:
    """QuantizeLinear -> DequantizeLinear with scale and zero point fed at run time (8/16-bit types)."""
    t = ONNX_TYPES[dtype]
    opset = 13 if dtype in ("int8", "uint8") else 21
    kw = {} if per_channel_axis is None else {"axis": per_channel_axis}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **kw),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **kw),
    ]
    graph = helper.make_graph(
        nodes, "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", t, None)],
        [helper.make_tensor_value_info("q", t, None), helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    return _session(model)


def _qdq_const_params(enc: Encoding, axis: int | None, dtype: str) -> ort.InferenceSession:
    """QDQ with scale/zero point as initializers (int4/uint4 cannot be fed from numpy); y only."""
    t = ONNX_TYPES[dtype]
    zp = enc.zero_point
    kw = {} if axis is None else {"axis": axis}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **kw),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **kw),
    ]
    inits = [numpy_helper.from_array(np.asarray(enc.scale, np.float32), "s"),
             helper.make_tensor("z", t, list(zp.shape), zp.ravel().tolist())]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return _session(model)


def dtypes_of(enc: Encoding) -> list[str]:
    """The integer types a grid is quantized in: its container (quantsim's QDQ, model_qdq.onnx) and,
    where it differs (4 bits and fewer), the smallest native type a 2.0.0 encodings file names."""
    return sorted({enc.container_dtype.name, output_dtype(enc)})


def ort_qdq(x: np.ndarray, enc: Encoding, dtype: str | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """onnxruntime's (q in ONNX terms, or None for 4-bit types; y) in ``dtype`` (default: enc's container)."""
    dtype = dtype or enc.container_dtype.name
    axis = enc.axis if enc.per_channel else None
    if dtype in NP_TYPES:
        sess = _qdq_runtime_params(dtype, axis)
        q, y = sess.run(None, {"x": x, "s": np.asarray(enc.scale, np.float32),
                               "z": enc.zero_point.astype(NP_TYPES[dtype])})
        return q.astype(np.int64), y
    (y,) = _qdq_const_params(enc, axis, dtype).run(None, {"x": x})
    return None, y


def ort_qdq_clip(x: np.ndarray, enc: Encoding, dtype: str | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """ORT QDQ followed by the documented clip to the bitwidth's range (ints, and floats via Clip bounds)."""
    q, y = ort_qdq(x, enc, dtype)
    lo, hi = enc.dequantized_bounds()
    y = np.minimum(np.maximum(y, enc.broadcast(lo, x.ndim)), enc.broadcast(hi, x.ndim))
    if q is not None:
        q = np.clip(q, enc.qmin, enc.qmax)
    return q, y


# ----------------------------------------------------------------------------------
# test data
# ----------------------------------------------------------------------------------
def _probe_values(enc: Encoding, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random values over the grid and 30% beyond it, exact .5 ties, and special values."""
    lo, hi = float(np.min(enc.min)), float(np.max(enc.max))
    span = hi - lo
    uniform = rng.uniform(lo - 0.3 * span, hi + 0.3 * span, n // 2)
    # ties: (k + 0.5) * scale for integers k around and beyond the grid
    s = float(np.min(enc.scale))
    k = rng.integers(enc.qmin - int(enc.zero_point.max()) - 4, enc.qmax - int(enc.zero_point.min()) + 4, n // 4)
    ties = (k + 0.5) * s
    near = (rng.integers(-40, 40, n - n // 2 - n // 4 - 12) + rng.choice([-0.5, 0.5, 0.25])) * s
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 1e-45, -1e-45, hi, lo, span * 100]
    return np.concatenate([uniform, ties, near, special]).astype(np.float32)


def _encodings_for(bw: int):
    """Per-tensor encodings: asymmetric, symmetric, strict symmetric, and a power-of-two scale (exact ties)."""
    rng = np.random.default_rng(bw)
    lo = -float(rng.uniform(0.1, 3.0))
    hi = float(rng.uniform(0.1, 5.0))
    yield "asym", encoding_from_range(lo, hi, bw, False)
    yield "asym-pos", encoding_from_range(0.0, hi, bw, False)
    yield "asym-neg", encoding_from_range(lo, 0.0, bw, False)
    yield "sym", encoding_from_range(lo, hi, bw, True)
    yield "strict", encoding_from_range(lo, hi, bw, True, strict_symmetric=True)
    pow2 = np.float32(2.0 ** -(bw // 2 + 3))
    yield "asym-pow2", Encoding(bw, False, pow2, -(2 ** (bw - 1)) + min(3, 2 ** (bw - 1) - 1))
    yield "sym-pow2", Encoding(bw, True, pow2, -(2 ** (bw - 1)))


def _per_channel_encodings(bw: int, channels: int, axis: int):
    rng = np.random.default_rng(100 + bw)
    lo = -rng.uniform(0.01, 2.0, channels)
    hi = rng.uniform(0.01, 3.0, channels)
    yield "asym", encoding_from_range(lo, hi, bw, False, axis=axis)
    yield "sym", encoding_from_range(lo, hi, bw, True, axis=axis)
    yield "strict", encoding_from_range(lo, hi, bw, True, strict_symmetric=True, axis=axis)


def _reference_quantize(x: np.ndarray, enc: Encoding) -> np.ndarray:
    """Straightforward scalar reference: q = clip(round_half_even(x / s) + zp, qmin, qmax), NaN -> qmin."""
    out = np.empty(x.shape, dtype=np.int64)
    scales = np.broadcast_to(enc.broadcast(enc.scale, x.ndim), x.shape)
    zps = np.broadcast_to(enc.broadcast(enc.zero_point, x.ndim), x.shape)
    for i in np.ndindex(x.shape):
        v = np.float32(x[i]) / np.float32(scales[i])  # float32 division, as onnxruntime
        if np.isnan(v):
            out[i] = enc.qmin
            continue
        if np.isinf(v):
            q = enc.qmax if v > 0 else enc.qmin
        else:
            q = round(float(v)) + int(zps[i])  # Python's round: half to even
        out[i] = min(max(q, enc.qmin), enc.qmax)
    return out


# ----------------------------------------------------------------------------------
# bit-exactness against onnxruntime
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bw", range(2, 17))
def test_per_tensor_matches_onnxruntime(bw):
    rng = np.random.default_rng(1000 + bw)
    for label, enc in _encodings_for(bw):
        x = _probe_values(enc, N_VALUES, rng)
        q = quantize(x, enc)
        y = fake_quantize(x, enc)
        for dtype in dtypes_of(enc):
            q_ort, y_ort = ort_qdq_clip(x, enc, dtype)
            if q_ort is not None:
                mismatch = np.flatnonzero(q != q_ort)
                assert mismatch.size == 0, (label, dtype, enc, x[mismatch[:5]], q[mismatch[:5]], q_ort[mismatch[:5]])
            assert np.array_equal(y, y_ort), (label, dtype, enc)
        assert y.dtype == np.float32
        assert q.min() >= enc.qmin and q.max() <= enc.qmax
        assert np.array_equal(dequantize(q, enc), y)


@pytest.mark.parametrize("bw", [2, 3, 4, 5, 6, 7, 8, 12, 16])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_per_channel_matches_onnxruntime(bw, axis):
    rng = np.random.default_rng(2000 + bw)
    channels = 7
    shape = [50, 50, 50]
    shape[axis] = channels
    shape[(axis + 1) % 3] = -(-N_VALUES // (channels * 50))
    for label, enc in _per_channel_encodings(bw, channels, axis):
        size = int(np.prod(shape))
        x = rng.permutation(_probe_values(enc, size, rng))[:size].reshape(shape)
        y = fake_quantize(x, enc)
        for dtype in dtypes_of(enc):
            q_ort, y_ort = ort_qdq_clip(x, enc, dtype)
            if dtype in ("int4", "uint4"):
                # onnxruntime 1.23's per-axis [u]int4 kernel (channel axis last) sends x / scale >= 2^31,
                # +inf included, to the type's minimum instead of its maximum; we saturate to the maximum.
                overflow = x / enc.broadcast(enc.scale, x.ndim) >= 2.0**31
                assert np.all(quantize(x, enc)[overflow] == enc.qmax)
                y_ort = np.where(overflow, y, y_ort)
            assert np.array_equal(y, y_ort), (label, dtype, enc)
            if q_ort is not None:
                assert np.array_equal(quantize(x, enc), q_ort), (label, dtype, enc)
        neg = Encoding(enc.bitwidth, enc.symmetric, enc.scale, enc.offset, axis=axis - 3)
        assert np.array_equal(quantize(x, neg), quantize(x, enc))


def test_onnxruntime_divides_rather_than_multiplying_by_the_reciprocal():
    """The reason quantize() divides: x * (1/scale) rounds differently on many inputs."""
    enc = Encoding(8, False, np.float32(0.0123), -100)
    x = _probe_values(enc, N_VALUES, np.random.default_rng(7))
    q_ort, _ = ort_qdq(x, enc)
    with np.errstate(invalid="ignore"):
        recip = np.clip(np.rint(x * (np.float32(1) / enc.scale)) + 100, 0, 255)
    assert np.array_equal(quantize(x, enc), q_ort)
    finite = np.isfinite(x)
    assert np.count_nonzero(recip[finite] != q_ort[finite]) > 100


@pytest.mark.parametrize("bw", [2, 4, 6, 8, 11, 16])
def test_matches_scalar_reference(bw):
    rng = np.random.default_rng(3000 + bw)
    for label, enc in _encodings_for(bw):
        x = _probe_values(enc, 3000, rng)
        assert np.array_equal(quantize(x, enc), _reference_quantize(x, enc)), label
    for label, enc in _per_channel_encodings(bw, 4, 1):
        x = rng.uniform(-4, 4, (3, 4, 50)).astype(np.float32)
        x[0, :, 0] = np.nan
        assert np.array_equal(quantize(x, enc), _reference_quantize(x, enc)), label


def test_nan_and_infinities_saturate_like_onnxruntime():
    enc = encoding_from_range(-1.0, 3.0, 8, False)
    q = quantize(np.array([np.nan, np.inf, -np.inf], np.float32), enc)
    assert q.tolist() == [0, 255, 0]
    sym = encoding_from_range(-1.0, 3.0, 6, True)
    assert quantize(np.array([np.nan, np.inf, -np.inf], np.float32), sym).tolist() == [-32, 31, -32]


def test_quantize_needs_axis_and_matching_channels():
    enc = encoding_from_range(np.array([-1.0, -2.0]), np.array([1.0, 2.0]), 8, True)
    with pytest.raises(ValueError, match="no axis"):
        quantize(np.zeros((2, 3), np.float32), enc)
    with pytest.raises(ValueError, match="channels"):
        quantize(np.zeros((3, 3), np.float32), Encoding(8, True, enc.scale, enc.offset, axis=0))


def test_wide_bias_grid_uses_int64():
    enc = Encoding(32, True, np.float32(1e-6), -(2**31))
    q = quantize(np.array([1.0, -1.0, 1e6], np.float32), enc)
    assert q.dtype == np.int64
    assert q.tolist()[:2] == [1_000_000, -1_000_000] and q[2] == 2**31 - 1


# ----------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------
def test_encoding_properties_and_onnx_mapping():
    asym = Encoding(8, False, np.float32(0.1), -20)
    assert (asym.qmin, asym.qmax, int(asym.zero_point)) == (0, 255, 20)
    assert asym.container_dtype == np.uint8 and not asym.signed and not asym.needs_clip
    assert float(asym.min) == pytest.approx(-2.0) and float(asym.max) == pytest.approx(23.5)
    sym = Encoding(8, True, np.float32(0.1), -128)
    assert (sym.qmin, sym.qmax, int(sym.zero_point)) == (-128, 127, 0)
    assert sym.container_dtype == np.int8 and sym.signed and not sym.strict_symmetric
    strict = Encoding(8, True, np.float32(0.1), -127)
    assert strict.strict_symmetric and (strict.qmin, strict.qmax) == (-127, 127) and strict.needs_clip
    assert float(strict.max) == pytest.approx(12.7) and float(strict.min) == pytest.approx(-12.7)
    grids = {bw: Encoding(bw, True, np.float32(1), -(2 ** (bw - 1))) for bw in (2, 4, 5, 8, 9, 16)}
    assert {bw: e.container_dtype.name for bw, e in grids.items()} == {
        2: "int8", 4: "int8", 5: "int8", 8: "int8", 9: "int16", 16: "int16"}
    assert {bw: output_dtype(e) for bw, e in grids.items()} == {  # 2.0.0 files name the native type
        2: "int4", 4: "int4", 5: "int8", 8: "int8", 9: "int16", 16: "int16"}
    assert grids[4].needs_clip and not grids[8].needs_clip
    six = Encoding(6, False, np.float32(1), 0)
    assert six.container_dtype == np.uint8 and six.needs_clip and six.container_range == (0, 255)
    lo, hi = six.dequantized_bounds()
    assert lo.dtype == np.float32 and (float(lo), float(hi)) == (0.0, 63.0)
    assert [container_bits(b) for b in (2, 4, 8, 12, 16, 17, 32)] == [8, 8, 8, 16, 16, 32, 32]


def test_encoding_is_immutable_comparable_and_hashable():
    a = encoding_from_range(np.array([-1.0, -2.0]), np.array([1.0, 2.0]), 8, True, axis=0)
    b = encoding_from_range(np.array([-1.0, -2.0]), np.array([1.0, 2.0]), 8, True, axis=0)
    assert a == b and hash(a) == hash(b) and a != encoding_from_range(-1.0, 1.0, 8, True)
    assert a.scale.dtype == np.float32 and a.offset.dtype == np.int64
    with pytest.raises(ValueError):
        a.scale[0] = 1.0
    with pytest.raises(AttributeError):
        a.bitwidth = 4  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, match", [
    (dict(bitwidth=1, symmetric=False, scale=0.1, offset=0), "bitwidth"),
    (dict(bitwidth=33, symmetric=False, scale=0.1, offset=0), "bitwidth"),
    (dict(bitwidth=8, symmetric=False, scale=0.0, offset=0), "scale"),
    (dict(bitwidth=8, symmetric=False, scale=np.nan, offset=0), "scale"),
    (dict(bitwidth=8, symmetric=False, scale=0.1, offset=5), "offset"),
    (dict(bitwidth=8, symmetric=False, scale=0.1, offset=-256), "offset"),
    (dict(bitwidth=8, symmetric=True, scale=0.1, offset=-100), "symmetric"),
    (dict(bitwidth=8, symmetric=False, scale=[0.1, 0.2], offset=[0]), "shape"),
    (dict(bitwidth=8, symmetric=False, scale=0.1, offset=-1.5), "integers"),
    (dict(bitwidth=8, symmetric=False, scale=0.1, offset=0, axis=0), "axis"),
])
def test_encoding_rejects_invalid_grids(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Encoding(**kwargs)


# ----------------------------------------------------------------------------------
# encoding_from_range: AIMET's formulas, by hand
# ----------------------------------------------------------------------------------
def test_asymmetric_range_by_hand():
    enc = encoding_from_range(-1.0, 2.0, 8, False)
    assert enc.scale == np.float32(3.0 / 255) and int(enc.offset) == -85  # round(-1 / (3/255)) = -85
    assert float(enc.min) == pytest.approx(-1.0, abs=1e-7) and float(enc.max) == pytest.approx(2.0, abs=1e-7)
    enc = encoding_from_range(-0.3, 1.7, 8, False)  # -0.3 / (2/255) = -38.25 -> -38
    assert enc.scale == np.float32(2.0 / 255) and int(enc.offset) == -38
    assert float(enc.min) == pytest.approx(-38 * 2.0 / 255, rel=1e-6)
    enc = encoding_from_range(-3.0, 7.5, 16, False)
    assert enc.scale == np.float32(10.5 / 65535) and int(enc.offset) == round(-3.0 / (10.5 / 65535))


def test_symmetric_range_by_hand():
    enc = encoding_from_range(-0.5, 0.5, 8, True)  # max / 127 > 0.5 / 128: the positive side decides
    assert enc.scale == np.float32(0.5 / 127) and int(enc.offset) == -128
    assert float(enc.max) == pytest.approx(0.5) and float(enc.min) == pytest.approx(-128 * 0.5 / 127)
    enc = encoding_from_range(-0.2, 0.9, 8, True)
    assert enc.scale == np.float32(0.9 / 127) and int(enc.offset) == -128
    enc = encoding_from_range(-0.9, 0.2, 8, True)  # the negative side gets its extra level: -0.9 is q = -128
    assert enc.scale == np.float32(0.9 / 128) and int(enc.offset) == -128
    assert float(enc.min) == pytest.approx(-0.9) and quantize(np.float32(-0.9), enc) == -128
    strict = encoding_from_range(-0.5, 0.5, 8, True, strict_symmetric=True)
    assert strict.scale == np.float32(0.5 / 127) and int(strict.offset) == -127
    assert float(strict.min) == pytest.approx(-0.5) and float(strict.max) == pytest.approx(0.5)
    strict = encoding_from_range(-0.9, 0.2, 8, True, strict_symmetric=True)
    assert strict.scale == np.float32(0.9 / 127)
    four = encoding_from_range(-1.0, 0.7, 4, True)
    assert four.scale == np.float32(1.0 / 8) and int(four.offset) == -8
    two = encoding_from_range(-1.0, 0.7, 2, True)  # AIMET at 2 bit: max / 2 as well as -min / 2
    assert two.scale == np.float32(0.5) and int(two.offset) == -2
    assert encoding_from_range(-0.1, 1.0, 2, True).scale == np.float32(0.5)  # q = +1 clips 1.0 to 0.5


def _closed_form_scale(lo, hi, bw, strict):
    """AIMET's symmetric scale in closed form (libpymo getComputedEncodings, bw > 2): max / (2^(bw-1) - 1)
    against -min / 2^(bw-1), or / (2^(bw-1) - 1) on both sides for strict symmetric."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    neg = 2 ** (bw - 1) - int(strict)
    return np.maximum(hi / (2 ** (bw - 1) - 1), -lo / neg).astype(np.float32)


@pytest.mark.parametrize("bw", [4, 8])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_symmetric_scale_matches_the_closed_form(bw, strict, per_channel):
    rng = np.random.default_rng(bw * 10 + strict)
    for _ in range(20):
        w = (rng.standard_normal((6, 3, 3, 3)) * rng.uniform(0.01, 3, (6, 1, 1, 1))
             + rng.uniform(-0.5, 0.5, (6, 1, 1, 1))).astype(np.float32)
        axes = (1, 2, 3) if per_channel else None
        lo, hi = w.min(axis=axes).astype(np.float64), w.max(axis=axes).astype(np.float64)
        enc = encoding_from_range(lo, hi, bw, True, strict_symmetric=strict, axis=0 if per_channel else None)
        assert np.array_equal(enc.scale, _closed_form_scale(lo, hi, bw, strict))
        assert np.all(enc.offset == -(2 ** (bw - 1) - int(strict)))
        q = quantize(w, enc)  # min-max: nothing clips, both ends land on the grid's ends
        assert q.min() >= enc.qmin and q.max() <= enc.qmax
        assert np.all(np.abs(fake_quantize(w, enc) - w) <= enc.broadcast(enc.scale, 4) * 0.5001)
        if strict:  # byte-identical to the formula before the change
            old = np.maximum(np.abs(lo), np.abs(hi)) / (2 ** (bw - 1) - 1)
            assert enc.scale.tobytes() == old.astype(np.float32).tobytes()


def test_ranges_always_hold_zero():
    pos = encoding_from_range(2.0, 5.0, 8, False)
    assert pos.scale == np.float32(5.0 / 255) and int(pos.offset) == 0 and float(pos.min) == 0.0
    neg = encoding_from_range(-4.0, -1.0, 8, False)
    assert neg.scale == np.float32(4.0 / 255) and int(neg.offset) == -255
    assert float(neg.max) == 0.0
    assert quantize(np.float32(0.0), neg) == 255 and fake_quantize(np.float32(0.0), pos) == 0.0


def test_degenerate_ranges():
    zero = encoding_from_range(0.0, 0.0, 8, False)  # AIMET: range nudged to [0, 0.01]
    assert zero.scale == np.float32(AIMET_MIN_RANGE / 255) and int(zero.offset) == 0
    tiny = encoding_from_range(-1e-4, 1e-4, 8, False)  # AIMET's minimum range applies
    assert float(tiny.max - tiny.min) == pytest.approx(AIMET_MIN_RANGE, rel=1e-6)
    exact = encoding_from_range(-1e-4, 1e-4, 8, False, min_range=0.0)
    assert exact.scale == np.float32(2e-4 / 255)
    floor = encoding_from_range(0.0, 0.0, 8, True, min_range=0.0)
    assert floor.scale > 0 and float(floor.scale) == pytest.approx(255 * minimum_scale(255) / 127, rel=1e-6)
    assert np.all(np.isfinite(fake_quantize(np.array([0.0, 1.0, -1.0], np.float32), floor)))


@pytest.mark.parametrize("lo, hi", [(np.nan, 1.0), (0.0, np.inf), (-np.inf, 0.0), (2.0, 1.0)])
def test_bad_ranges_raise(lo, hi):
    with pytest.raises(ValueError, match="range"):
        encoding_from_range(lo, hi, 8, False)


def test_per_channel_ranges_match_scalar_calls():
    rng = np.random.default_rng(5)
    lo = -rng.uniform(0, 2, 16)
    hi = rng.uniform(0, 2, 16)
    lo[3], hi[3] = 0.0, 0.0
    hi[5] = -0.5
    lo[5] = -1.0
    for sym in (False, True):
        enc = encoding_from_range(lo, hi, 8, sym, axis=0)
        assert enc.per_channel and enc.axis == 0 and enc.num_channels == 16
        for c in range(16):
            one = encoding_from_range(lo[c], hi[c], 8, sym)
            assert enc.scale[c] == one.scale and enc.offset[c] == one.offset


# ----------------------------------------------------------------------------------
# range search
# ----------------------------------------------------------------------------------
def _gaussian_hist(n_total: float, lo: float, hi: float, bins: int = 512):
    edges = np.linspace(lo, hi, bins + 1)
    mids = (edges[:-1] + edges[1:]) / 2
    counts = np.rint(n_total * np.exp(-mids**2 / 2) * (edges[1] - edges[0]) / np.sqrt(2 * np.pi))
    return counts, edges


def test_tf_enhanced_clips_a_few_huge_outliers():
    counts, edges = _gaussian_hist(2e7, -30.0, 45.0)
    counts[0] += 1  # one value at about -30
    counts[-1] += 2  # two at about +45
    for sym in (False, True):
        lo, hi = tf_enhanced_range(counts, edges, 8, sym)
        assert hi - lo < 0.35 * (edges[-1] - edges[0]), (sym, lo, hi)
        assert lo < -3.0 and hi > 3.0  # the bulk is kept


def test_tf_enhanced_keeps_uniform_range():
    rng = np.random.default_rng(11)
    x = rng.uniform(-1.0, 3.0, 200_000)
    counts, edges = np.histogram(x, bins=512)
    lo, hi = tf_enhanced_range(counts, edges, 8, False)
    assert lo == pytest.approx(-1.0, abs=0.03) and hi == pytest.approx(3.0, abs=0.03)
    lo, hi = tf_enhanced_range(counts, edges, 8, True)
    assert -lo == pytest.approx(3.0, abs=0.05) and hi == pytest.approx(3.0, abs=0.05)
    enc = tf_enhanced_encoding(counts, edges, 8, True)
    assert int(enc.offset) == -128 and float(enc.max) == pytest.approx(hi)
    strict = tf_enhanced_encoding(counts, edges, 8, True, strict_symmetric=True)
    assert int(strict.offset) == -127


def test_tf_enhanced_encoding_is_the_searched_grid():
    rng = np.random.default_rng(12)
    counts, edges = np.histogram(rng.standard_t(3, 100_000), bins=512)
    enc = tf_enhanced_encoding(counts, edges, 8, False)
    lo, hi = tf_enhanced_range(counts, edges, 8, False)
    assert float(enc.min) == pytest.approx(lo, rel=1e-6) and float(enc.max) == pytest.approx(hi, rel=1e-6)
    assert counts.sum() > 0 and -255 <= int(enc.offset) <= 0


def test_tf_enhanced_per_channel_rows_are_independent():
    rng = np.random.default_rng(13)
    rows = [np.histogram(rng.normal(0, s, 20_000), bins=512) for s in (0.5, 1.0, 4.0)]
    counts = np.stack([r[0] for r in rows])
    edges = np.stack([r[1] for r in rows])
    enc = tf_enhanced_encoding(counts, edges, 8, True, axis=0)
    assert enc.per_channel and enc.axis == 0
    for c, (h, e) in enumerate(rows):
        one = tf_enhanced_encoding(h, e, 8, True)
        assert enc.scale[c] == one.scale and enc.offset[c] == one.offset


def _docstring_costs(counts, edges, deltas, offsets, steps):
    """The module docstring's cost of every candidate, straight from its formula (longdouble)."""
    mids = ((edges[:-1] + edges[1:]) / 2).astype(np.longdouble)
    h = counts.astype(np.longdouble)
    d = deltas.astype(np.longdouble)[:, None]
    o = offsets.astype(np.longdouble)[:, None]
    q = np.rint(mids[None, :] / d - o)
    e = (np.clip(q, 0, steps) + o) * d - mids[None, :]
    return (h[None, :] * e * e * np.where((q < 0) | (q > steps), 3.0, 1.0)).sum(axis=1)


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("bw", [8, 4])
def test_tf_enhanced_picks_the_least_cost_of_every_candidate(sym, bw):
    """The search skips candidates whose clipping alone exceeds a cost it knows: what it picks is
    still the least cost of the docstring's formula over all candidates (to the kernel's float
    arithmetic: its clipping noise comes from prefix sums)."""
    from aimetcli.kernels.range_search import _candidates

    rng = np.random.default_rng(20 + bw)
    steps = 2**bw - 1
    for trial in range(40):
        x = rng.standard_t(1 + trial % 6, 3000 + 50 * trial) * rng.uniform(1e-3, 10)
        if trial % 4 == 0:
            x = np.maximum(x, 0)
        if trial % 5 == 0:
            x[: 3 * trial] = 40 * x.max()  # a cluster of outliers
        counts, edges = np.histogram(x, bins=[512, 64, 7, 1][trial % 4])
        lo, hi = tf_enhanced_range(counts, edges, bw, sym)
        occupied = np.flatnonzero(counts)
        first, last = edges[occupied[0]], edges[occupied[-1] + 1]
        obs_lo, obs_hi = min(first, 0.0), max(last, 0.0)
        obs_hi = max(obs_hi, obs_lo + 0.01)
        deltas, offsets = _candidates(np.array([obs_lo]), np.array([obs_hi]), steps, sym)
        costs = _docstring_costs(counts.astype(float), edges, deltas[0], offsets[0], steps)
        least = costs.min()
        won = int(np.flatnonzero(np.isclose(deltas[0] * offsets[0], lo, rtol=1e-12, atol=0)
                                 & np.isclose(deltas[0] * (offsets[0] + steps), hi, rtol=1e-12, atol=0))[0])
        assert costs[won] <= least * (1 + 1e-9), (trial, won, int(np.argmin(costs)))


def test_tf_enhanced_ties_go_to_the_widest_grid():
    """A channel far below the minimum range puts every value on grid index 0 under every
    symmetric candidate: their costs are equal up to float noise, and the widest grid wins (the
    most room for the int32 bias grid s_x * s_w a runtime derives from it)."""
    rng = np.random.default_rng(21)
    counts, edges = np.histogram(rng.normal(0, 1e-11, 500), bins=512)
    enc = tf_enhanced_encoding(counts, edges, 8, True)
    widest = 2 * AIMET_MIN_RANGE / 255 * 101 / 100  # d_max * 101 / 100, d_max = 2 max(|lo|, |hi|) / N
    assert float(enc.scale) == pytest.approx(widest, rel=1e-3)
    asym = tf_enhanced_encoding(counts, edges, 8, False)
    assert float(asym.scale) >= AIMET_MIN_RANGE / 255 * 0.999  # the widest delta, d0 * 17 / 16 clamped


def test_tf_enhanced_is_fast_enough():
    import time

    rng = np.random.default_rng(14)
    counts, edges = np.histogram(rng.uniform(-1, 3, 100_000), bins=512)  # every bin occupied
    best = min(_timed(lambda: tf_enhanced_range(counts, edges, 8, False), time) for _ in range(20))
    assert best < 0.01  # ~1 ms here; generous for loaded CI machines


def _timed(fn, time) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_percentile_on_known_histogram():
    counts = np.full(100, 100)  # 10 000 values, 100 per unit bin on [0, 100)
    edges = np.arange(101, dtype=np.float64)
    # AIMET: (100 - p)% cut on each side; min/max are left edges of the bins reaching those quantiles
    assert percentile_range(counts, edges, 90.0) == (9.0, 89.0)
    assert percentile_range(counts, edges, 99.0) == (0.0, 98.0)
    assert percentile_range(counts, edges, 100.0) == (0.0, 100.0)
    spiky = np.zeros(100)
    spiky[40] = 1000
    assert percentile_range(spiky, edges, 99.0) == (40.0, 41.0)  # one bin wide at least
    with pytest.raises(ValueError, match="50..100"):
        percentile_range(counts, edges, 30.0)


def test_histogram_validation():
    with pytest.raises(ValueError, match="empty"):
        tf_enhanced_range(np.zeros(8), np.arange(9.0), 8, False)
    with pytest.raises(ValueError, match="does not fit"):
        tf_enhanced_range(np.ones(8), np.arange(8.0), 8, False)


@pytest.mark.parametrize("bw, sym", [(8, False), (8, True), (6, False), (4, True), (16, False)])
def test_fake_quantize_finite_equals_fake_quantize(bw, sym):
    from aimetcli.kernels.quant import fake_quantize_finite

    rng = np.random.default_rng(bw)
    enc = encoding_from_range(-1.3, 2.7, bw, sym)
    x = np.concatenate([rng.normal(0, 2, 100_000), (np.arange(-300, 300) + 0.5) * float(enc.scale),
                        [1e30, -1e30]]).astype(np.float32)
    np.testing.assert_array_equal(fake_quantize_finite(x, enc), fake_quantize(x, enc))


def test_unsigned_symmetric_is_one_rule():
    """AIMET's unsigned symmetric: decided by is_unsigned_symmetric, built by unsigned_symmetric_encoding;
    the observers (and calibration's reductions, bias correction's in-graph grids) use both."""
    from aimetcli.calibration.observers import MinMaxObserver, observe_encoding
    from aimetcli.kernels.quant import QuantScheme, is_unsigned_symmetric, unsigned_symmetric_encoding

    assert is_unsigned_symmetric(True, True, 0.0) and is_unsigned_symmetric(True, True, np.array([0.0, 2.0]))
    assert not is_unsigned_symmetric(True, True, np.array([0.0, -1e-9]))
    assert not is_unsigned_symmetric(False, True, 1.0) and not is_unsigned_symmetric(True, False, 1.0)
    enc = unsigned_symmetric_encoding(6.0, 8)
    assert not enc.symmetric and int(enc.offset) == 0 and enc.container_dtype == np.uint8
    assert enc == encoding_from_range(0.0, 6.0, 8, False)
    obs = MinMaxObserver()
    obs.update(np.array([0.0, 3.0, 6.0], np.float32))
    assert observe_encoding(obs, QuantScheme.MIN_MAX, 8, True, unsigned_symmetric=True) == enc
    assert observe_encoding(obs, QuantScheme.MIN_MAX, 8, True).symmetric
