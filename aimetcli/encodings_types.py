"""The records of an AIMET encodings file (``TensorEncoding``, ``QuantizerArgs``,
``EncodingsFile``, ``EncodingsError``), the versions supported and which bitwidths each holds.
The layouts are in :mod:`aimetcli.encodings`; writing in ``encodings_write``, reading in
``encodings_read``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aimetcli.kernels.quant import Encoding, QuantScheme

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
