"""Writing AIMET encodings files, versions 0.6.1, 1.0.0 and 2.0.0 (layouts in
:mod:`aimetcli.encodings`): one entry writer per version, :func:`to_dict` and :func:`dumps`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from aimetcli.encodings_types import (
    _NATIVE_BITS,
    DEFAULT_VERSION,
    SUPPORTED_VERSIONS,
    QuantizerArgs,
    TensorEncoding,
    check_bitwidth,
)
from aimetcli.kernels.quant import Encoding


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
    return text(to_dict(encodings, version=version, quantizer_args=quantizer_args, excluded_layers=excluded_layers))


def text(doc: dict) -> str:
    """A :func:`to_dict` document as the file's text."""
    return json.dumps(doc, sort_keys=True, indent=2, allow_nan=False) + "\n"
