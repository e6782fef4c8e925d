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

This module is the API (the names in ``__all__``); the records and the version rules are in
``encodings_types``, writing in ``encodings_write``, reading and its checks in ``encodings_read``.
"""

from aimetcli.encodings_read import loads
from aimetcli.encodings_types import (
    DEFAULT_VERSION,
    SUPPORTED_VERSIONS,
    EncodingsError,
    EncodingsFile,
    QuantizerArgs,
    TensorEncoding,
    aimet_quant_scheme_name,
    check_bitwidth,
)
from aimetcli.encodings_write import dumps, output_dtype, to_dict

__all__ = [
    "DEFAULT_VERSION",
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
