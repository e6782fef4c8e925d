"""Where each weighted op keeps its channels: one :class:`LayerSpec` per op type (numpy only).

Every technique that touches a layer's channels (BN folding, cross-layer scaling, high-bias
absorption, bias correction, per-channel quantizer placement) reads this table and nothing
else about the layout:

==================  ============================  ========  =======  =====  ====  =======
op                  weight                        out axis  in axis  group  bias  channel
==================  ============================  ========  =======  =====  ====  =======
Conv                W[Cout, Cin/g, k...]          0         1        1      2     1
ConvTranspose       W[Cin, Cout/g, k...]          1         0        1      2     1
Gemm (transB=0)     B[K, N]                       1         0        -      2     -1
Gemm (transB=1)     B[N, K]                       0         1        -      2     -1
MatMul              B[K, N] (2-D weights only)    1         0        -      -     -1
==================  ============================  ========  =======  =====  ====  =======

*group*: the weight axis that holds the channels of one group (the ``group`` attribute);
the other channel axis then holds all groups' channels, group after group. A channel axis
equal to the group axis counts ``groups`` times its length, channel ``g * len + c`` being
``c`` of group ``g``. *bias*: the input slot of the bias (MatMul has none: it becomes Gemm to
get one). *channel*: the channel axis of the layer's data input and output tensors (1 for
[N, C, spatial...], -1 for [..., C]; the same axis for 2-D tensors).

The per-channel quantization axis of a weight is its output axis, except where the output
channels are not one axis (a grouped ConvTranspose) or the weight is not 2-D (MatMul).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerSpec:
    """The channel layout of one op type (a row of the table above)."""

    op_type: str
    out_axis: int  # weight axis of the output channels
    in_axis: int  # weight axis of the input channels
    group_axis: int | None  # weight axis holding one group's channels; None: the op has no groups
    bias_slot: int | None  # input index of the bias; None: no bias input
    channel_axis: int  # channel axis of the data input and output tensors: 1 or -1

    def channels(self, shape: tuple[int, ...], axis: int, groups: int) -> int:
        """Channels along weight ``axis`` (all groups' on the group axis)."""
        return shape[axis] * (groups if axis == self.group_axis else 1)

    def out_channels(self, shape: tuple[int, ...], groups: int) -> int:
        return self.channels(shape, self.out_axis, groups)

    def in_channels(self, shape: tuple[int, ...], groups: int) -> int:
        return self.channels(shape, self.in_axis, groups)

    def per_channel_axis(self, groups: int, weight_ndim: int) -> int | None:
        """The weight axis of a per-channel quantizer (one scale per output channel), or None when
        the output channels are not one axis (grouped ConvTranspose) or the weight not 2-D (MatMul)."""
        if self.out_axis == self.group_axis and groups != 1:
            return None
        if self.channel_axis == -1 and weight_ndim != 2:
            return None
        return self.out_axis

    def output_rank(self, weight_ndim: int) -> int:
        """Rank of the layer's output as the techniques handle it: the weight's for convolutions
        ([N, C, spatial...]), 2 for Gemm and the 2-D MatMul they accept."""
        return weight_ndim if self.channel_axis == 1 else 2


CONV = LayerSpec("Conv", out_axis=0, in_axis=1, group_axis=1, bias_slot=2, channel_axis=1)
CONV_TRANSPOSE = LayerSpec("ConvTranspose", out_axis=1, in_axis=0, group_axis=1, bias_slot=2, channel_axis=1)
GEMM = LayerSpec("Gemm", out_axis=1, in_axis=0, group_axis=None, bias_slot=2, channel_axis=-1)
GEMM_TRANS_B = LayerSpec("Gemm", out_axis=0, in_axis=1, group_axis=None, bias_slot=2, channel_axis=-1)
MATMUL = LayerSpec("MatMul", out_axis=1, in_axis=0, group_axis=None, bias_slot=None, channel_axis=-1)

LAYER_SPECS: dict[tuple[str, bool], LayerSpec] = {
    ("Conv", False): CONV,
    ("ConvTranspose", False): CONV_TRANSPOSE,
    ("Gemm", False): GEMM,
    ("Gemm", True): GEMM_TRANS_B,
    ("MatMul", False): MATMUL,
}


def layer_spec(op_type: str, trans_b: bool = False) -> LayerSpec | None:
    """The spec of ``op_type`` (Gemm: with its transB), None for other ops."""
    return LAYER_SPECS.get((op_type, bool(trans_b) and op_type == "Gemm"))


def channel_abs_max(w: np.ndarray, spec: LayerSpec, groups: int, axis: int) -> np.ndarray:
    """max |w| per channel of weight ``axis`` (``spec.out_axis`` or ``spec.in_axis``), float64.

    On the group axis the weight is read as [groups, d0 / groups, d1, k...] and channel
    ``g * d1 + c`` is the maximum over its group's slice of axis 0 and the taps.
    """
    w = np.asarray(w)
    if axis == spec.group_axis:
        d0, d1 = w.shape[0], w.shape[1]
        return _abs_max(w.reshape(groups, d0 // groups, d1, -1), (1, 3)).reshape(-1)
    return _abs_max(w, tuple(i for i in range(w.ndim) if i != axis))


def _abs_max(w: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """max |w| over ``axes`` as float64, without an |w| copy of the whole tensor."""
    return np.maximum(w.max(axis=axes), -w.min(axis=axes)).astype(np.float64)
