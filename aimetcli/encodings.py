"""AIMET encodings JSON files, versions 0.6.1, 1.0.0 and 2.0.0: writer and reader.

Layouts, as AIMET writes them (aimet_onnx ``qc_quantize_op.export_encodings`` and
``QuantizationSimModel._export_encodings``, aimet_torch ``_export_to_1_0_0``):

0.6.1  {"version": "0.6.1",
        "activation_encodings": {name: [entry, ...]}, "param_encodings": {name: [entry, ...]},
        "excluded_layers": [...], "quantizer_args": {...}}
       entry = {"bitwidth": int, "dtype": "int", "is_symmetric": "True" | "False",
                "min": float, "max": float, "offset": int, "scale": float}
       one entry per channel; a list of one entry is per tensor.
1.0.0  {"version": "1.0.0", "activation_encodings": [entry, ...], "param_encodings": [entry, ...],
        "excluded_layers": [...], "quantizer_args": {...}}
       entry = {"name": str, "enc_type": "PER_TENSOR" | "PER_CHANNEL", "dtype": "INT",
                "bw": int, "is_sym": bool, "scale": [float, ...], "offset": [int, ...]}
2.0.0  {"version": "2.0.0", "encodings": [entry, ...]}   (no quantizer_args, no excluded_layers)
       entry = {"name": str, "output_dtype": "int8" | "uint8" | "int16" | ... ,
                "y_scale": float (per tensor) | [float, ...] (per channel),
                "y_zero_point": int | [int, ...]  (omitted when all zero),
                "axis": int (per channel only)}
       output_dtype is the smallest native type of the bitwidth, signed for symmetric;
       y_zero_point = -offset for unsigned and -offset - 2^(bits-1) for signed types
       (AIMET's rule: 0 for symmetric grids, -1 for strict symmetric int8).

``offset`` is always AIMET's (real = scale * (q + offset)). quantizer_args is
{"activation_bitwidth", "dtype": "int", "is_symmetric" (the parameters'),
"param_bitwidth", "per_channel_quantization", "quant_scheme" (e.g.
"post_training_tf_enhanced")}; booleans are JSON booleans.

Reading notes:
  * 0.6.1 and 1.0.0 do not record a per-channel axis: such encodings come back
    with axis=None (the caller maps axes from the model); 2.0.0's ``axis`` is kept.
  * 2.0.0 does not say which tensors are parameters: pass ``param_names`` to
    :func:`loads`; without it, per-channel entries are taken as parameters and
    per-tensor ones as activations.
  * 2.0.0 has no bitwidth field: the bitwidth read back is the type's width, so
    the writer refuses bitwidths other than 4, 8, 16, 32 for 2.0.0.
  * quantizer_args has no activation symmetry; it reads back as True only when
    every activation encoding is symmetric (AIMET's default: asymmetric).
  * An "is_sym" grid with offset 0 (AIMET's unsigned symmetric) is read as the
    asymmetric grid it is. FLOAT (fp16) entries carry no integer grid: their names
    are listed in ``EncodingsFile.float_tensors``.
  * PER_BLOCK, LPBQ, block_size and VECTOR encodings are not supported.

Writing is deterministic: ``sort_keys=True, indent=2`` and a trailing newline;
encodings keep the caller's order. Scales are written as the exact float64 value of
the float32 scale, so any reader recovers the identical float32.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aimetcli.kernels.quant import Encoding, QuantScheme

__all__ = [
    "SUPPORTED_VERSIONS",
    "EncodingsError",
    "EncodingsFile",
    "QuantizerArgs",
    "TensorEncoding",
    "aimet_quant_scheme_name",
    "check_bitwidth",
    "dumps",
    "loads",
    "output_dtype",
    "to_dict",
]

SUPPORTED_VERSIONS = ("0.6.1", "1.0.0", "2.0.0")
DEFAULT_VERSION = "1.0.0"

_AIMET_SCHEME_NAMES = {
    QuantScheme.MIN_MAX: "post_training_tf",
    QuantScheme.TF_ENHANCED: "post_training_tf_enhanced",
    QuantScheme.PERCENTILE: "post_training_percentile",
}
_NATIVE_BITS = (4, 8, 16, 32)


class EncodingsError(ValueError):
    """A malformed or unsupported encodings file; the message names the key or entry."""


@dataclass(frozen=True)
class TensorEncoding:
    name: str
    encoding: Encoding
    kind: Literal["activation", "param"]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tensor name must be a non-empty string, got {self.name!r}")
        if self.kind not in ("activation", "param"):
            raise ValueError(f"kind must be 'activation' or 'param', got {self.kind!r}")
        if not isinstance(self.encoding, Encoding):
            raise TypeError(f"encoding of {self.name!r} must be an Encoding, got {type(self.encoding).__name__}")


@dataclass(frozen=True)
class QuantizerArgs:
    """Global quantsim settings recorded in 0.6.1/1.0.0 files (AIMET's ``quantizer_args``)."""

    activation_bitwidth: int
    param_bitwidth: int
    per_channel: bool
    activation_symmetric: bool
    param_symmetric: bool
    quant_scheme: str  # AIMET's name, e.g. "post_training_tf_enhanced"


@dataclass(frozen=True)
class EncodingsFile:
    version: str
    encodings: list[TensorEncoding]
    quantizer_args: QuantizerArgs | None
    excluded_layers: tuple[str, ...] = ()
    float_tensors: tuple[str, ...] = ()


def aimet_quant_scheme_name(scheme: QuantScheme) -> str:
    """AIMET's QuantScheme name for ``quantizer_args`` (e.g. 'post_training_tf')."""
    return _AIMET_SCHEME_NAMES[QuantScheme(scheme)]


# ----------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------
def _scales(enc: Encoding) -> list[float]:
    return [float(s) for s in np.atleast_1d(enc.scale)]


def _offsets(enc: Encoding) -> list[int]:
    return [int(o) for o in np.atleast_1d(enc.offset)]


def _entry_061(enc: Encoding) -> list[dict[str, Any]]:
    steps = enc.num_steps
    out = []
    for s, o in zip(_scales(enc), _offsets(enc)):
        out.append({
            "bitwidth": enc.bitwidth,
            "dtype": "int",
            "is_symmetric": "True" if enc.symmetric else "False",
            "max": s * (o + steps),
            "min": s * o,
            "offset": o,
            "scale": s,
        })
    return out


def _entry_100(name: str, enc: Encoding) -> dict[str, Any]:
    return {
        "name": name,
        "enc_type": "PER_CHANNEL" if enc.per_channel else "PER_TENSOR",
        "dtype": "INT",
        "bw": enc.bitwidth,
        "is_sym": enc.symmetric,
        "scale": _scales(enc),
        "offset": _offsets(enc),
    }


def check_bitwidth(version: str, bitwidth: int, name: str = "") -> None:
    """Raise ValueError when an encodings file of ``version`` cannot hold a ``bitwidth``-bit grid.

    Version 2.0.0 has no bitwidth field (the width is the output dtype's), so it holds only
    4, 8, 16 and 32 bits; 0.6.1 and 1.0.0 hold any. The CLI calls this with the requested
    bitwidths before any work, the writer with each encoding's.
    """
    if version == "2.0.0" and bitwidth not in _NATIVE_BITS:
        raise ValueError(
            f"{name + ': ' if name else ''}version 2.0.0 has no bitwidth field and cannot hold a {bitwidth}-bit grid "
            f"(only {', '.join(map(str, _NATIVE_BITS))}); write version 1.0.0 instead"
        )


def output_dtype(enc: Encoding) -> str:
    """2.0.0's ``output_dtype``: the smallest native ONNX integer type of the bitwidth ('int4',
    'uint8', ...), signed for symmetric grids, as AIMET names it. A file format's name for the
    grid, not the container quantsim's QDQ uses (``kernels.quant.container_bits``: int8 for 4 bits)."""
    bits = next(b for b in _NATIVE_BITS if enc.bitwidth <= b)
    return f"{'' if enc.signed else 'u'}int{bits}"


def _entry_200(name: str, enc: Encoding) -> dict[str, Any]:
    check_bitwidth("2.0.0", enc.bitwidth, repr(name))
    bits = enc.bitwidth
    offset = enc.offset.astype(np.int64)
    zero_point = -offset - 2 ** (bits - 1) if enc.signed else -offset
    entry: dict[str, Any] = {"name": name, "output_dtype": output_dtype(enc)}
    if enc.per_channel:
        if enc.axis is None:
            raise ValueError(f"{name!r}: per-channel encoding has no axis; version 2.0.0 needs one")
        entry["y_scale"] = _scales(enc)
        entry["axis"] = enc.axis
        if np.any(zero_point != 0):
            entry["y_zero_point"] = [int(z) for z in zero_point]
    else:
        entry["y_scale"] = float(enc.scale)
        if int(zero_point) != 0:
            entry["y_zero_point"] = int(zero_point)
    return entry


def _quantizer_args_dict(qa: QuantizerArgs) -> dict[str, Any]:
    return {
        "activation_bitwidth": int(qa.activation_bitwidth),
        "dtype": "int",
        "is_symmetric": bool(qa.param_symmetric),
        "param_bitwidth": int(qa.param_bitwidth),
        "per_channel_quantization": bool(qa.per_channel),
        "quant_scheme": str(qa.quant_scheme),
    }


def _check_names(encodings: Sequence[TensorEncoding]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for te in encodings:
        if not isinstance(te, TensorEncoding):
            raise TypeError(f"expected TensorEncoding, got {type(te).__name__}")
        key = (te.kind, te.name)
        if key in seen:
            raise ValueError(f"{te.kind} encoding {te.name!r} is given twice")
        seen[key] = 1


def to_dict(encodings: Sequence[TensorEncoding], *, version: str = DEFAULT_VERSION,
            quantizer_args: QuantizerArgs | None = None, excluded_layers: Iterable[str] = ()) -> dict:
    """The JSON object of an encodings file of ``version`` (see the module docstring).

    quantizer_args and excluded_layers are written for 0.6.1 and 1.0.0 only (2.0.0
    has neither field; they are dropped).
    """
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"unsupported encodings version {version!r}; choose one of {', '.join(SUPPORTED_VERSIONS)}")
    encodings = list(encodings)
    _check_names(encodings)
    excluded = [str(n) for n in excluded_layers]
    if version == "2.0.0":
        names = [te.name for te in encodings]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"version 2.0.0 holds one encoding per tensor; {sorted(dup)[0]!r} appears twice")
        return {"version": version, "encodings": [_entry_200(te.name, te.encoding) for te in encodings]}

    acts = [te for te in encodings if te.kind == "activation"]
    params = [te for te in encodings if te.kind == "param"]
    if version == "0.6.1":
        out: dict[str, Any] = {
            "version": version,
            "activation_encodings": {te.name: _entry_061(te.encoding) for te in acts},
            "param_encodings": {te.name: _entry_061(te.encoding) for te in params},
        }
    else:
        out = {
            "version": version,
            "activation_encodings": [_entry_100(te.name, te.encoding) for te in acts],
            "param_encodings": [_entry_100(te.name, te.encoding) for te in params],
        }
    out["excluded_layers"] = excluded
    if quantizer_args is not None:
        out["quantizer_args"] = _quantizer_args_dict(quantizer_args)
    return out


def dumps(encodings: Sequence[TensorEncoding], *, version: str = DEFAULT_VERSION,
          quantizer_args: QuantizerArgs | None = None, excluded_layers: Iterable[str] = ()) -> str:
    """:func:`to_dict` as JSON text: sorted keys, indent 2, trailing newline, deterministic."""
    obj = to_dict(encodings, version=version, quantizer_args=quantizer_args, excluded_layers=excluded_layers)
    return json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n"


# ----------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------
def _err(where: str, msg: str) -> EncodingsError:
    return EncodingsError(f"{where}: {msg}")


def _need(obj: dict, key: str, where: str):
    if key not in obj:
        raise _err(where, f"missing key {key!r}")
    return obj[key]


def _int(v, where: str, key: str) -> int:
    if isinstance(v, bool):
        raise _err(where, f"{key!r} must be an integer, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v == int(v):  # AIMET-ONNX writes offsets as -128.0
        return int(v)
    raise _err(where, f"{key!r} must be an integer, got {v!r}")


def _number(v, where: str, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _err(where, f"{key!r} must be a number, got {v!r}")
    return float(v)


def _bool(v, where: str, key: str, *, strings: bool) -> bool:
    if isinstance(v, bool) and not strings:
        return v
    if strings and v in ("True", "False"):
        return v == "True"
    want = '"True" or "False"' if strings else "true or false"
    raise _err(where, f"{key!r} must be {want}, got {v!r}")


def _list(v, where: str, key: str) -> list:
    if not isinstance(v, list):
        raise _err(where, f"{key!r} must be a list, got {type(v).__name__}")
    return v


def _dict(v, where: str, key: str) -> dict:
    if not isinstance(v, dict):
        raise _err(where, f"{key!r} must be an object, got {type(v).__name__}")
    return v


def _make_encoding(where: str, bw: int, symmetric: bool, scales: list[float], offsets: list[int],
                   per_channel: bool, axis: int | None = None) -> Encoding:
    if not scales:
        raise _err(where, "'scale' is empty")
    if len(scales) != len(offsets):
        raise _err(where, f"{len(scales)} scales but {len(offsets)} offsets")
    scale = np.asarray(scales, dtype=np.float32)
    offset = np.asarray(offsets, dtype=np.int64)
    if not per_channel:
        if scale.size != 1:
            raise _err(where, f"per-tensor encoding has {scale.size} scales")
        scale, offset = scale[0], offset[0]
    if symmetric and np.all(offset == 0):
        symmetric = False  # AIMET's unsigned symmetric: the grid is asymmetric with offset 0
    try:
        return Encoding(bw, symmetric, scale, offset, axis=axis)
    except ValueError as e:
        raise _err(where, str(e)) from None


def _read_061_group(group: dict, kind: str, out: list[TensorEncoding], floats: list[str]) -> None:
    for name, entries in group.items():
        where = f"{kind}_encodings[{name!r}]"
        entries = _list(entries, f"{kind}_encodings", name)
        if not entries:
            raise _err(where, "no encoding entries")
        dtypes = set()
        bws, syms, scales, offsets = set(), set(), [], []
        for i, e in enumerate(entries):
            w = f"{where}[{i}]"
            e = _dict(e, where, str(i))
            dtype = _need(e, "dtype", w)
            if dtype not in ("int", "float"):
                raise _err(w, f"'dtype' must be \"int\" or \"float\", got {dtype!r}")
            dtypes.add(dtype)
            bws.add(_int(_need(e, "bitwidth", w), w, "bitwidth"))
            if dtype == "float":
                continue
            syms.add(_bool(_need(e, "is_symmetric", w), w, "is_symmetric", strings=True))
            scales.append(_number(_need(e, "scale", w), w, "scale"))
            offsets.append(_int(_need(e, "offset", w), w, "offset"))
        if len(dtypes) > 1 or len(bws) > 1 or len(syms) > 1:
            raise _err(where, "channels disagree on dtype, bitwidth or is_symmetric")
        if dtypes == {"float"}:
            floats.append(name)
            continue
        enc = _make_encoding(where, bws.pop(), syms.pop(), scales, offsets, per_channel=len(entries) > 1)
        out.append(TensorEncoding(name, enc, kind))  # type: ignore[arg-type]


def _read_100_group(group: list, kind: str, out: list[TensorEncoding], floats: list[str]) -> None:
    for i, e in enumerate(group):
        where = f"{kind}_encodings[{i}]"
        e = _dict(e, f"{kind}_encodings", str(i))
        name = _need(e, "name", where)
        if not isinstance(name, str) or not name:
            raise _err(where, f"'name' must be a non-empty string, got {name!r}")
        where = f"{kind}_encodings[{i}] ({name!r})"
        dtype = _need(e, "dtype", where)
        if dtype not in ("INT", "FLOAT"):
            raise _err(where, f"'dtype' must be \"INT\" or \"FLOAT\", got {dtype!r}")
        bw = _int(_need(e, "bw", where), where, "bw")
        if dtype == "FLOAT":
            floats.append(name)
            continue
        enc_type = _need(e, "enc_type", where)
        if enc_type not in ("PER_TENSOR", "PER_CHANNEL"):
            raise _err(where, f"'enc_type' {enc_type!r} is not supported (PER_TENSOR or PER_CHANNEL)")
        if "block_size" in e:
            raise _err(where, "'block_size' (blockwise quantization) is not supported")
        sym = _bool(_need(e, "is_sym", where), where, "is_sym", strings=False)
        scales = [_number(s, where, "scale") for s in _list(_need(e, "scale", where), where, "scale")]
        offsets = [_int(o, where, "offset") for o in _list(_need(e, "offset", where), where, "offset")]
        enc = _make_encoding(where, bw, sym, scales, offsets, per_channel=enc_type == "PER_CHANNEL")
        out.append(TensorEncoding(name, enc, kind))  # type: ignore[arg-type]


_DTYPES_200 = {f"{s}int{b}": (s == "", b) for s in ("", "u") for b in _NATIVE_BITS}


def _read_200(group: list, param_names: Collection[str] | None) -> list[TensorEncoding]:
    out = []
    for i, e in enumerate(group):
        where = f"encodings[{i}]"
        e = _dict(e, "encodings", str(i))
        name = _need(e, "name", where)
        if not isinstance(name, str) or not name:
            raise _err(where, f"'name' must be a non-empty string, got {name!r}")
        where = f"encodings[{i}] ({name!r})"
        dtype = _need(e, "output_dtype", where)
        if dtype not in _DTYPES_200:
            raise _err(where, f"'output_dtype' {dtype!r} is not supported ({', '.join(_DTYPES_200)})")
        if "block_size" in e or "per_block_int_scale" in e:
            raise _err(where, "blockwise encodings are not supported")
        signed, bits = _DTYPES_200[dtype]
        y_scale = _need(e, "y_scale", where)
        per_channel = isinstance(y_scale, list)
        scales = ([_number(s, where, "y_scale") for s in y_scale] if per_channel
                  else [_number(y_scale, where, "y_scale")])
        zp = e.get("y_zero_point", None)
        if zp is None:
            zps = [0] * len(scales)
        elif per_channel:
            zps = [_int(z, where, "y_zero_point") for z in _list(zp, where, "y_zero_point")]
        else:
            zps = [_int(zp, where, "y_zero_point")]
        axis = None
        if per_channel:
            axis = _int(_need(e, "axis", where), where, "axis")
        elif "axis" in e and e["axis"] is not None:
            raise _err(where, "'axis' given for a per-tensor 'y_scale'")
        zmin, zmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        bad = [z for z in zps if not zmin <= z <= zmax]
        if bad:
            raise _err(where, f"'y_zero_point' {bad[0]} is outside {dtype} [{zmin}, {zmax}]")
        offsets = [-(z + 2 ** (bits - 1)) if signed else -z for z in zps]
        full, strict = -(2 ** (bits - 1)), -(2 ** (bits - 1) - 1)
        symmetric = signed and (all(o == full for o in offsets) or all(o == strict for o in offsets))
        enc = _make_encoding(where, bits, symmetric, scales, offsets, per_channel=per_channel, axis=axis)
        if param_names is not None:
            kind = "param" if name in param_names else "activation"
        else:
            kind = "param" if per_channel else "activation"
        out.append(TensorEncoding(name, enc, kind))  # type: ignore[arg-type]
    return out


def _read_quantizer_args(qa: dict, acts: list[TensorEncoding]) -> QuantizerArgs:
    where = "quantizer_args"
    qa = _dict(qa, "top level", "quantizer_args")

    def flag(key):  # AIMET's spec says "True"/"False" strings; its code writes booleans
        v = _need(qa, key, where)
        return v == "True" if v in ("True", "False") else _bool(v, where, key, strings=False)

    scheme = _need(qa, "quant_scheme", where)
    if not isinstance(scheme, str):
        raise _err(where, f"'quant_scheme' must be a string, got {scheme!r}")
    return QuantizerArgs(
        activation_bitwidth=_int(_need(qa, "activation_bitwidth", where), where, "activation_bitwidth"),
        param_bitwidth=_int(_need(qa, "param_bitwidth", where), where, "param_bitwidth"),
        per_channel=flag("per_channel_quantization"),
        activation_symmetric=bool(acts) and all(te.encoding.symmetric for te in acts),
        param_symmetric=flag("is_symmetric"),
        quant_scheme=scheme,
    )


def loads(text: str | bytes, *, param_names: Collection[str] | None = None) -> EncodingsFile:
    """Parse an encodings file of any supported version (see the module docstring).

    Raises :class:`EncodingsError` with a one-line message naming the bad key or entry.
    """
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EncodingsError(f"not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise EncodingsError(f"top level must be a JSON object, got {type(obj).__name__}")
    version = obj.get("version")
    if version is None:
        raise EncodingsError("missing key 'version'")
    if version not in SUPPORTED_VERSIONS:
        raise EncodingsError(f"'version' {version!r} is not supported ({', '.join(SUPPORTED_VERSIONS)})")

    if version == "2.0.0":
        group = _list(_need(obj, "encodings", "top level"), "top level", "encodings")
        return EncodingsFile(version, _read_200(group, param_names), None)

    encodings: list[TensorEncoding] = []
    floats: list[str] = []
    act_group = _need(obj, "activation_encodings", "top level")
    param_group = _need(obj, "param_encodings", "top level")
    if version == "0.6.1":
        _read_061_group(_dict(act_group, "top level", "activation_encodings"), "activation", encodings, floats)
        _read_061_group(_dict(param_group, "top level", "param_encodings"), "param", encodings, floats)
    else:
        _read_100_group(_list(act_group, "top level", "activation_encodings"), "activation", encodings, floats)
        _read_100_group(_list(param_group, "top level", "param_encodings"), "param", encodings, floats)
    excluded = obj.get("excluded_layers", [])
    excluded = _list(excluded, "top level", "excluded_layers")
    if not all(isinstance(n, str) for n in excluded):
        raise EncodingsError("excluded_layers: every entry must be a string")
    qa = obj.get("quantizer_args")
    acts = [te for te in encodings if te.kind == "activation"]
    quantizer_args = None if qa is None else _read_quantizer_args(qa, acts)
    return EncodingsFile(version, encodings, quantizer_args, tuple(excluded), tuple(floats))
