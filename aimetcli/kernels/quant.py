"""Quantization grids, AIMET's range-to-encoding formulas and bit-exact QDQ (numpy only).

Two integer conventions meet here.

AIMET (encodings files, :class:`Encoding`)
    real = scale * (q + offset),  q in [0, num_steps],  num_steps = 2^bw - 1
    (2^bw - 2 for strict symmetric). ``offset`` is a non-positive integer. A
    symmetric encoding has offset = -2^(bw-1) (strict: -(2^(bw-1) - 1)), so a
    symmetric int8 grid shows offset -128 and covers [-128 s, 127 s].

ONNX QuantizeLinear / DequantizeLinear
    q_onnx = saturate(round_half_even(x / scale) + zero_point)
    real   = (q_onnx - zero_point) * scale

The map used throughout aimetcli:
    symmetric  -> signed type,   zero_point = 0,       q_onnx = q + offset
                  (q - 2^(bw-1); strict: q - 2^(bw-1) + 1), range [offset, 2^(bw-1) - 1]
    asymmetric -> unsigned type, zero_point = -offset, q_onnx = q, range [0, 2^bw - 1]

onnxruntime (CPU, checked bit for bit in tests/test_quant_kernels.py):
  * divides, x / scale in float32 (not x * (1/scale), which differs on ~5% of inputs),
  * rounds half to even, adds the zero point, saturates to the integer type of the
    QuantizeLinear (the *container*, :func:`container_bits`: int8/int16/int32 and unsigned
    twins here; int4/uint4 behave alike, tested too); NaN and -inf saturate to the container
    minimum, +inf to the container maximum,
  * dequantizes as float32(q - zero_point) * scale.

:func:`quantize` reproduces that and then clips to the bitwidth's own range
``[qmin, qmax]``. For a bitwidth narrower than its container (6 bit in int8), or a
strict symmetric grid (-127..127 in int8), onnxruntime's QuantizeLinear does not
clip that far: the QDQ graph needs a Clip after DequantizeLinear to the bounds
:meth:`Encoding.dequantized_bounds` (``Encoding.needs_clip`` says when). With that
Clip the graph equals :func:`fake_quantize` exactly.

Range to encoding (AIMET's libpymo ``TfEncodingAnalyzer::computeEncoding``, which
AIMET-ONNX uses for every scheme once a (min, max) is known):
    min' = min(min, 0),  max' = max(max, 0),  max' = max(max', min' + min_range)
    (min_range = 0.01 in AIMET; it also turns min == max == 0 into a real range)
  asymmetric:  scale  = (max' - min') / num_steps
               offset = clamp(round(min' / scale), -num_steps, 0)  (round half away from 0)
  symmetric:   scale  = max(max' / floor(num_steps / 2), -min' / ceil(num_steps / 2))
               offset = -ceil(num_steps / 2)      (-2^(bw-1); strict: -(2^(bw-1) - 1))
               i.e. max(max' / (2^(bw-1) - 1), -min' / 2^(bw-1)): the negative side's extra
               level is used, and max' is never clipped. Strict symmetric (both counts
               2^(bw-1) - 1) reduces to max(|min'|, |max'|) / (2^(bw-1) - 1). At 2 bit
               (num_steps 3) max' is divided by 2, not 1 (:func:`symmetric_step_counts`).
               (libpymo's getComputedEncodings and aimet_torch's MinMaxEncodingAnalyzer; AIMET
               releases before that divided max(|min'|, |max'|) by floor(num_steps / 2).)
  and the encoding's min/max are re-derived: min = scale * offset,
  max = scale * (offset + num_steps).
The arithmetic is float64; the scale is then stored as float32, the type every
runtime uses, and min/max are derived from that float32 scale.
AIMET's "unsigned symmetric" mode (symmetric quantizer, data >= 0: the grid [0, max],
offset 0) is an asymmetric grid with offset 0 here: :func:`is_unsigned_symmetric` decides,
:func:`unsigned_symmetric_encoding` builds it (calibration's observers and in-session
reductions and bias correction's in-graph grids all go through these two).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AIMET_MIN_RANGE",
    "Encoding",
    "QuantScheme",
    "container_bits",
    "dequantize",
    "encoding_from_range",
    "is_unsigned_symmetric",
    "fake_quantize",
    "minimum_scale",
    "num_steps",
    "quantize",
    "symmetric_step_counts",
    "unsigned_symmetric_encoding",
]

# libpymo TfEncodingAnalyzer::MIN_RANGE: every computed range spans at least this much.
AIMET_MIN_RANGE = 0.01

MIN_BITWIDTH = 2
MAX_BITWIDTH = 32  # 2..16 for activations and weights; up to 32 for biases


class QuantScheme(enum.Enum):
    """How a range is chosen from observed data (AIMET's post_training_* schemes)."""

    MIN_MAX = "min-max"  # AIMET post_training_tf
    TF_ENHANCED = "tf-enhanced"  # AIMET post_training_tf_enhanced (SQNR search)
    PERCENTILE = "percentile"  # AIMET post_training_percentile


def container_bits(bitwidth: int) -> int:
    """Width of the ONNX integer type (the *container*) a ``bitwidth``-bit grid is stored and
    quantized in, in quantsim's QDQ graphs and the exported model_qdq.onnx: 8 up to 8 bits,
    16 up to 16, 32 beyond (biases). Grids of up to 8 bits run at opset 13, whose
    QuantizeLinear has only int8/uint8 (no int4), and a grid narrower than its container
    gets a Clip to its own range (:attr:`Encoding.needs_clip`). The one container rule:
    quantsim/insert.py, export and bias correction all read it from here.
    """
    for bits in (8, 16, 32):
        if bitwidth <= bits:
            return bits
    raise ValueError(f"bitwidth {bitwidth} is wider than 32")


def num_steps(bitwidth: int, strict_symmetric: bool = False) -> int:
    """Number of grid steps: 2^bw - 1, one fewer for strict symmetric."""
    return 2**bitwidth - 1 - int(strict_symmetric)


def minimum_scale(steps: int) -> float:
    """Smallest scale a computed encoding gets (AIMET's ``_get_minimum_scale``).

    min(float32 eps, 0.01 / steps): 1.19e-7 up to 16 bit, 2.3e-12 at 32 bit, so a
    grid never collapses and nothing divides by zero.
    """
    return min(float(np.finfo(np.float32).eps), 0.01 / steps)


def check_bitwidth(bitwidth) -> int:
    """The bitwidth as an int, or ValueError unless it is an integer in 2..32."""
    if isinstance(bitwidth, bool) or not isinstance(bitwidth, (int, np.integer)):
        raise ValueError(f"bitwidth must be an integer, got {bitwidth!r}")
    bw = int(bitwidth)
    if not MIN_BITWIDTH <= bw <= MAX_BITWIDTH:
        raise ValueError(f"bitwidth must be in {MIN_BITWIDTH}..{MAX_BITWIDTH}, got {bw}")
    return bw


@dataclass(frozen=True, eq=False)
class Encoding:
    """Per-tensor (scale.shape == ()) or per-channel (scale.shape == (C,), with axis) quantization grid.

    AIMET convention: real = scale * (q + offset), q in [0, 2^bw - 1] (2^bw - 2 when
    strict symmetric). ``scale`` is float32, ``offset`` int64 of the same shape; both
    are stored as read-only copies. ``axis`` is the channel axis of the quantized
    tensor; it may be None for a per-channel grid read from a file that does not
    record it, but :func:`quantize` needs it.

    Symmetric grids have offset -2^(bw-1), or -(2^(bw-1) - 1) for strict symmetric
    (detected from the offset, as AIMET's loader does); asymmetric grids need
    0 <= -offset <= 2^bw - 1 so that zero is on the grid.
    """

    bitwidth: int
    symmetric: bool
    scale: np.ndarray
    offset: np.ndarray
    axis: int | None = None

    def __post_init__(self) -> None:
        bw = check_bitwidth(self.bitwidth)
        scale = np.array(self.scale, dtype=np.float32)
        offset_in = np.asarray(self.offset)
        if offset_in.dtype.kind == "f":
            if not np.all(np.isfinite(offset_in)) or np.any(offset_in != np.round(offset_in)):
                raise ValueError(f"offset must hold integers, got {offset_in.tolist()}")
        elif offset_in.dtype.kind not in "iu":
            raise ValueError(f"offset must hold integers, got dtype {offset_in.dtype}")
        offset = np.array(offset_in, dtype=np.int64)
        if scale.ndim > 1:
            raise ValueError(f"scale must be a scalar or 1-D, got shape {scale.shape}")
        if offset.shape != scale.shape:
            raise ValueError(f"offset shape {offset.shape} differs from scale shape {scale.shape}")
        if scale.ndim == 1 and scale.size == 0:
            raise ValueError("per-channel scale is empty")
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError(f"scale must be finite and > 0, got {_short(scale)}")
        if self.axis is not None:
            if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)):
                raise ValueError(f"axis must be an integer or None, got {self.axis!r}")
            if scale.ndim == 0:
                raise ValueError("a per-tensor encoding has no axis")
            object.__setattr__(self, "axis", int(self.axis))
        symmetric = bool(self.symmetric)
        if symmetric:
            full, strict = -(2 ** (bw - 1)), -(2 ** (bw - 1) - 1)
            if not (np.all(offset == full) or np.all(offset == strict)):
                raise ValueError(
                    f"symmetric {bw}-bit offset must be {full} (or {strict} for strict symmetric) "
                    f"on every channel, got {_short(offset)}"
                )
        elif np.any(offset > 0) or np.any(offset < -(2**bw - 1)):
            raise ValueError(f"asymmetric {bw}-bit offset must be in [{-(2**bw - 1)}, 0], got {_short(offset)}")
        scale.setflags(write=False)
        offset.setflags(write=False)
        object.__setattr__(self, "bitwidth", bw)
        object.__setattr__(self, "symmetric", symmetric)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "offset", offset)

    # -- identity -----------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Encoding):
            return NotImplemented
        return (
            self.bitwidth == other.bitwidth
            and self.symmetric == other.symmetric
            and self.axis == other.axis
            and self.scale.shape == other.scale.shape
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.offset, other.offset)
        )

    def __hash__(self) -> int:
        return hash((self.bitwidth, self.symmetric, self.axis, self.scale.shape,
                     self.scale.tobytes(), self.offset.tobytes()))

    def __repr__(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        axis = "" if self.axis is None else f", axis={self.axis}"
        return f"Encoding({self.bitwidth}-bit {kind}, scale={_short(self.scale)}, offset={_short(self.offset)}{axis})"

    # -- grid ---------------------------------------------------------------------
    @property
    def per_channel(self) -> bool:
        return self.scale.ndim == 1

    @property
    def num_channels(self) -> int:
        return int(self.scale.size) if self.per_channel else 1

    @property
    def signed(self) -> bool:
        """ONNX integer type is signed exactly for symmetric grids."""
        return self.symmetric

    @property
    def strict_symmetric(self) -> bool:
        return self.symmetric and int(self.offset.flat[0]) == -(2 ** (self.bitwidth - 1) - 1)

    @property
    def num_steps(self) -> int:
        return num_steps(self.bitwidth, self.strict_symmetric)

    @property
    def qmin(self) -> int:
        """Smallest integer in ONNX terms: -2^(bw-1) (+1 strict) signed, 0 unsigned."""
        if self.symmetric:
            return -(2 ** (self.bitwidth - 1)) + int(self.strict_symmetric)
        return 0

    @property
    def qmax(self) -> int:
        """Largest integer in ONNX terms: 2^(bw-1) - 1 signed, 2^bw - 1 unsigned."""
        return 2 ** (self.bitwidth - 1) - 1 if self.symmetric else 2**self.bitwidth - 1

    @property
    def zero_point(self) -> np.ndarray:
        """ONNX zero point (int64, shape of scale): 0 for symmetric, -offset for asymmetric."""
        return np.zeros_like(self.offset) if self.symmetric else np.negative(self.offset, out=np.empty_like(self.offset))

    @property
    def min(self) -> np.ndarray:
        """Smallest representable real value, scale * offset (float64)."""
        return np.asarray(self.scale.astype(np.float64) * self.offset)

    @property
    def max(self) -> np.ndarray:
        """Largest representable real value, scale * (offset + num_steps) (float64)."""
        return np.asarray(self.scale.astype(np.float64) * (self.offset + self.num_steps))

    # -- ONNX ---------------------------------------------------------------------
    @property
    def container_dtype(self) -> np.dtype:
        """numpy dtype of the container (:func:`container_bits`): signed exactly for symmetric grids."""
        return np.dtype(f"{'' if self.signed else 'u'}int{container_bits(self.bitwidth)}")

    @property
    def container_range(self) -> tuple[int, int]:
        """(min, max) of the container, where onnxruntime's QuantizeLinear saturates."""
        info = np.iinfo(self.container_dtype)
        return int(info.min), int(info.max)

    @property
    def needs_clip(self) -> bool:
        """True when QuantizeLinear into the container saturates wider than [qmin, qmax] (grids
        narrower than their container, strict symmetric grids): a Clip/Max/Min must follow."""
        return (self.qmin, self.qmax) != self.container_range

    def dequantized_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 (low, high) that DequantizeLinear yields for qmin and qmax.

        These are the exact Clip bounds that make ``QDQ -> Clip`` equal :func:`fake_quantize`.
        """
        lo = dequantize(np.full(self.scale.shape, self.qmin, np.int64), self._channel_only())
        hi = dequantize(np.full(self.scale.shape, self.qmax, np.int64), self._channel_only())
        return lo, hi

    def _channel_only(self) -> Encoding:
        # The same grid laid on a 1-D tensor of its channels.
        return self if not self.per_channel or self.axis == 0 else Encoding(
            self.bitwidth, self.symmetric, self.scale, self.offset, axis=0)

    def broadcast(self, values: np.ndarray, ndim: int) -> np.ndarray:
        """Reshape per-channel ``values`` (shape of scale) to broadcast along ``axis`` of an ndim tensor."""
        if not self.per_channel:
            return values
        if self.axis is None:
            raise ValueError("per-channel encoding has no axis; set one before quantizing a tensor")
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 0 <= axis < ndim:
            raise ValueError(f"axis {self.axis} out of range for a {ndim}-D tensor")
        shape = [1] * ndim
        shape[axis] = -1
        return values.reshape(shape)


def _short(a: np.ndarray) -> str:
    a = np.asarray(a)
    if a.size <= 4:
        return str(a.tolist())
    return f"[{a.flat[0]}, {a.flat[1]}, ... {a.size} values]"


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C's round(): ties away from zero, as libpymo rounds offsets."""
    return np.copysign(np.floor(np.abs(v) + 0.5), v)


def symmetric_step_counts(steps: int) -> tuple[int, int]:
    """(positive, negative) step counts a symmetric grid of ``steps`` steps divides max and -min by
    (libpymo ``getComputedEncodings``): floor(steps / 2) and ceil(steps / 2), so the negative side's
    extra level (q = -2^(bw-1)) is used: 127 and 128 at 8 bit, 7 and 8 at 4 bit; strict symmetric
    (steps = 2^bw - 2) gives 2^(bw-1) - 1 for both. At 2 bit (steps = 3) AIMET divides max by 2
    as well (one level clipped on the positive side rather than one wasted on the negative).
    The one symmetric rule: :func:`encoding_from_range` and bias correction's in-graph grids
    (aimetcli/correction_graph.py) read it from here."""
    pos = steps // 2
    return pos + int(steps == 3), steps - pos


def encoding_from_range(min_val, max_val, bitwidth: int, symmetric: bool, *,
                        strict_symmetric: bool = False, axis: int | None = None,
                        min_range: float = AIMET_MIN_RANGE) -> Encoding:
    """AIMET's encoding for an observed range (scalars, or 1-D arrays for per-channel).

    See the module docstring for the formulas. ``min_range`` is AIMET's minimum span
    (0.01); pass 0 to keep tiny ranges as they are (a range of zero still gets the
    :func:`minimum_scale`). Raises ValueError for NaN/Inf bounds or min > max.
    """
    bw = check_bitwidth(bitwidth)
    lo = np.asarray(min_val, dtype=np.float64)
    hi = np.asarray(max_val, dtype=np.float64)
    if lo.shape != hi.shape:
        raise ValueError(f"min shape {lo.shape} differs from max shape {hi.shape}")
    if lo.ndim > 1:
        raise ValueError(f"ranges must be scalars or 1-D per-channel arrays, got shape {lo.shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(f"cannot build an encoding from a non-finite range: min={_short(lo)}, max={_short(hi)}")
    if np.any(lo > hi):
        raise ValueError(f"range minimum exceeds maximum: min={_short(lo)}, max={_short(hi)}")
    if not (min_range >= 0 and math.isfinite(min_range)):
        raise ValueError(f"min_range must be finite and >= 0, got {min_range}")
    if axis is not None and lo.ndim == 0:
        raise ValueError("axis given for a per-tensor range")
    strict = bool(symmetric) and bool(strict_symmetric)
    steps = num_steps(bw, strict)

    lo = np.minimum(lo, 0.0)
    hi = np.maximum(hi, 0.0)
    hi = np.maximum(hi, lo + min_range)
    # Degenerate guard: never a scale below minimum_scale (also covers min_range=0, range 0).
    hi = np.maximum(hi, lo + steps * minimum_scale(steps))

    if symmetric:
        pos, neg = symmetric_step_counts(steps)
        scale = np.maximum(hi / pos, -lo / neg)
        offset = np.full(lo.shape, -neg, dtype=np.int64)
    else:
        scale = (hi - lo) / steps
        offset = np.clip(_round_half_away(lo / scale), -steps, 0).astype(np.int64)
    return Encoding(bw, bool(symmetric), scale.astype(np.float32), offset, axis=axis)


def is_unsigned_symmetric(symmetric: bool, enabled: bool, data_min) -> bool:
    """AIMET's unsigned symmetric rule: with the config's ``unsigned_symmetric`` on (``enabled``,
    AIMET's default), a symmetric quantizer whose data are never negative (``data_min >= 0``, on
    every channel) gets :func:`unsigned_symmetric_encoding` instead of a signed grid that would
    waste its negative half."""
    return bool(symmetric and enabled and np.all(np.asarray(data_min) >= 0))


def unsigned_symmetric_encoding(max_val, bitwidth: int, *, axis: int | None = None,
                                min_range: float = AIMET_MIN_RANGE) -> Encoding:
    """AIMET's unsigned symmetric grid [0, max]: offset 0 on unsigned integers, which is the
    asymmetric :func:`encoding_from_range` of the range [0, max]."""
    hi = np.asarray(max_val, np.float64)
    return encoding_from_range(np.zeros_like(hi), hi, bitwidth, False, axis=axis, min_range=min_range)


def quantize(x, enc: Encoding, dtype=None) -> np.ndarray:
    """Integers in ONNX terms, exactly as onnxruntime's QuantizeLinear, then clipped to [qmin, qmax].

    q = clip(saturate_container(round_half_even(float32(x) / scale) + zero_point), qmin, qmax),
    NaN -> qmin. Returns int32 (bitwidth <= 16) or int64 (wider), or ``dtype`` (an integer type
    that holds [qmin, qmax], such as the container type).
    """
    x = np.asarray(x, dtype=np.float32)
    # Integers beyond 2^24 (bitwidths over 16) need float64 for the zero-point shift.
    work = np.float32 if enc.bitwidth <= 16 else np.float64
    scale = enc.broadcast(enc.scale, x.ndim)
    zp = enc.broadcast(enc.zero_point.astype(work), x.ndim)
    if enc.per_channel:
        axis = enc.axis + x.ndim if enc.axis < 0 else enc.axis
        if x.shape[axis] != enc.num_channels:
            raise ValueError(f"tensor has {x.shape[axis]} channels on axis {enc.axis}, encoding has {enc.num_channels}")
    # Saturation to [qmin - zp, qmax - zp] before adding zp is exact: the bounds are integers.
    lo = enc.qmin - zp
    hi = enc.qmax - zp
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        # float32 division, a new array worked on in place (0-d input gives a scalar: made an array)
        v = np.asarray(np.divide(x, scale, dtype=np.float32))
        np.rint(v, out=v)  # round half to even
    if work is not np.float32:
        v = v.astype(work)
    nan = np.isnan(v)
    if nan.any():
        np.copyto(v, np.broadcast_to(lo, v.shape), where=nan)
    np.clip(v, lo, hi, out=v)
    v += zp
    q = v.astype(dtype if dtype is not None else np.int32 if enc.bitwidth <= 16 else np.int64)
    return q[()] if q.ndim == 0 else q  # a 0-d input gives a numpy scalar, as numpy's ufuncs do


def dequantize(q, enc: Encoding) -> np.ndarray:
    """float32((q - zero_point)) * scale in float32, as onnxruntime's DequantizeLinear."""
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise ValueError(f"dequantize expects integers, got dtype {q.dtype}")
    zp = enc.broadcast(enc.zero_point, q.ndim)
    scale = enc.broadcast(enc.scale, q.ndim)
    return (q.astype(np.int64) - zp).astype(np.float32) * scale


def fake_quantize(x, enc: Encoding) -> np.ndarray:
    """dequantize(quantize(x)): the value a QDQ pair (plus Clip where needed) produces."""
    return dequantize(quantize(x, enc), enc)


def fake_quantize_finite(x: np.ndarray, enc: Encoding) -> np.ndarray:
    """:func:`fake_quantize` for finite float32 data, in four in-place float32 passes.

    round_half_even(x / scale) clipped to [qmin - zp, qmax - zp] *is* (q - zp) as a float
    (integers below 2^24 are exact), and times scale it is what DequantizeLinear returns,
    so the result equals :func:`fake_quantize` bit for bit where ``x`` is finite (NaN is
    not mapped to qmin here). Used on whole activation tensors during bias correction.
    """
    if enc.bitwidth > 16:
        return fake_quantize(x, enc)
    x = np.asarray(x, dtype=np.float32)
    scale = enc.broadcast(enc.scale, x.ndim).astype(np.float32)
    zp = enc.broadcast(enc.zero_point, x.ndim).astype(np.float32)
    out = np.divide(x, scale)
    np.rint(out, out=out)
    np.clip(out, enc.qmin - zp, enc.qmax - zp, out=out)
    np.multiply(out, scale, out=out)
    return out
