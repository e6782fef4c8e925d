"""Reading AIMET encodings files, versions 0.6.1, 1.0.0 and 2.0.0 (layouts and reading notes
in :mod:`aimetcli.encodings`): the checks of every field (each failure an ``EncodingsError``
naming the key or entry), one reader per version and :func:`loads`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection

import numpy as np

from aimetcli.encodings_types import (
    _NATIVE_BITS,
    SUPPORTED_VERSIONS,
    EncodingsError,
    EncodingsFile,
    QuantizerArgs,
    TensorEncoding,
)
from aimetcli.kernels.quant import Encoding


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
