"""Batch-norm folding math (numpy only).

BatchNormalization computes, per channel c,
    BN(x)_c = gamma_c (x_c - mean_c) / sqrt(var_c + eps) + beta_c = s_c x_c + t_c
with s = gamma / sqrt(var + eps) and t = beta - mean * s.

Backward fold (layer then BN), y = W * x + b:
    BN(y)_o = s_o (W_o * x + b_o) + t_o  =>  W'_o = s_o W_o,  b'_o = s_o b_o + t_o
applied along the layer's output-channel axis.

Forward fold (BN then layer), y = W * BN(x) + b with no padding:
    y_o = sum_c W_oc * (s_c x_c + t_c) + b_o
        =>  W'_oc = W_oc s_c,  b'_o = b_o + sum_{c,k} W_oc[k] t_c
Exact only when every output position sees every kernel tap on real input, i.e.
the layer pads nothing (zero padding in BN-output space is not zero in x space).

float32 weights are scaled in float32, the factor rounded to float32 first (within
2 ulp of the float64 product rounded once, far below the 1e-5 the equivalence tests
allow): a float64 working copy doubles the memory and the work (docs/design.md,
"Measurements behind code choices"). Other dtypes are scaled in float64 and cast back.
"""

from __future__ import annotations

import numpy as np

from aimetcli.kernels.layout import LayerSpec


def bn_scale_shift(gamma, beta, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """s, t such that BN(x) = s x + t (float64)."""
    gamma, beta, mean, var = (np.asarray(a, np.float64).reshape(-1) for a in (gamma, beta, mean, var))
    s = gamma / np.sqrt(var + float(eps))
    return s, beta - mean * s


def working_array(w: np.ndarray) -> np.ndarray:
    """The weight in the dtype its arithmetic runs in: float32 for float32 weights, else float64.
    No copy when it already is (callers that own the result scale it in place)."""
    w = np.asarray(w)
    if w.dtype == np.float32:
        return w
    return w.astype(np.float64, copy=False)


_DIRECT_OUT = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _working(weight: np.ndarray, out_dtype) -> tuple[np.ndarray, np.dtype]:
    """(weight as handed to the multiply, the dtype the multiply runs in).

    With ``out_dtype`` (float16/32/64 weights) the weight is not converted first: the
    multiply converts it chunk by chunk and rounds straight into the result's dtype,
    which gives the same bits as converting, multiplying and casting back.
    """
    w = np.asarray(weight)
    if out_dtype is not None and w.dtype in _DIRECT_OUT and np.dtype(out_dtype) in _DIRECT_OUT:
        return w, (w.dtype if w.dtype == np.float32 else np.dtype(np.float64))
    w = working_array(w)
    return w, w.dtype


def _multiply(w: np.ndarray, factor: np.ndarray, inplace: bool, out_dtype=None) -> np.ndarray:
    """w * factor; in place when asked and possible (large arrays the caller owns).

    ``out_dtype``: the product is rounded straight into an array of that dtype.
    """
    if out_dtype is not None:
        out = np.empty(w.shape, out_dtype)
        np.multiply(w, factor, out=out, dtype=factor.dtype, casting="unsafe")
        return out
    if inplace and w.flags.writeable and w.dtype == factor.dtype:
        np.multiply(w, factor, out=w)
        return w
    return w * factor


def _scale_channels(weight: np.ndarray, scale: np.ndarray, spec: LayerSpec, groups: int, axis: int,
                    inplace: bool, out_dtype) -> np.ndarray:
    """weight * scale along one channel axis: on the spec's group axis the channels on axis 1 of
    each group (W[d0, d1, k...] seen as [groups, d0 / groups, d1, k...]), else along ``axis``."""
    w, work = _working(weight, out_dtype)
    s = np.asarray(scale, np.float64).reshape(-1).astype(work, copy=False)
    if axis == spec.group_axis:
        d0, d1 = w.shape[0], w.shape[1]
        view = w.reshape(groups, d0 // groups, d1, *w.shape[2:])
        factor = s.reshape(groups, 1, d1, *([1] * (w.ndim - 2)))
    else:
        view, factor = w, _expand(s, w.ndim, axis)
    return _multiply(view, factor, inplace and w is weight, out_dtype).reshape(w.shape)


def _expand(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def scale_output_channels(weight: np.ndarray, scale: np.ndarray, *, spec: LayerSpec, groups: int = 1,
                          inplace: bool = False, out_dtype=None) -> np.ndarray:
    """Multiply each output channel of a layer's weight by ``scale`` (in working_array's dtype).

    The output channels are on ``spec.out_axis`` (kernels/layout.py's table).
    ``inplace``: the caller owns ``weight`` and it may be overwritten (float32 only).
    ``out_dtype``: the result's dtype (the same arithmetic, rounded once into it).
    """
    return _scale_channels(weight, scale, spec, groups, spec.out_axis, inplace, out_dtype)


def scale_input_channels(weight: np.ndarray, scale: np.ndarray, *, spec: LayerSpec, groups: int = 1,
                         inplace: bool = False, out_dtype=None) -> np.ndarray:
    """Multiply each input channel of a layer's weight by ``scale`` (in working_array's dtype).

    For grouped convolutions ``scale`` has one entry per input channel of the layer
    (Cin), and Conv's W[:, c_local] of group g belongs to input channel g*Cin/g + c_local.
    ``out_dtype``: the result's dtype (the same arithmetic, rounded once into it).
    """
    return _scale_channels(weight, scale, spec, groups, spec.in_axis, inplace, out_dtype)


def input_channel_sums(weight: np.ndarray, vec: np.ndarray, *, spec: LayerSpec, groups: int = 1) -> np.ndarray:
    """Per output channel o: sum over input channels c and kernel taps k of W[o, c, k] * vec[c].

    This is the layer applied to a constant input ``vec`` (one value per input
    channel) without its bias and without padding effects.
    """
    w = np.asarray(weight, np.float64)
    vec = np.asarray(vec, np.float64).reshape(-1)
    if spec.group_axis is None:  # 2-D: B[K, N] (in axis 0) or B[N, K]
        return (vec @ w) if spec.in_axis == 0 else (w @ vec)
    d0, d1 = w.shape[0], w.shape[1]
    ksum = w.reshape(d0, d1, -1).sum(axis=2).reshape(groups, d0 // groups, d1)
    if spec.in_axis == spec.group_axis:  # Conv: [groups, Cout/g, Cin/g]
        return np.einsum("goc,gc->go", ksum, vec.reshape(groups, d1)).reshape(d0)
    # ConvTranspose: [groups, Cin/g, Cout/g]
    return np.einsum("gco,gc->go", ksum, vec.reshape(groups, d0 // groups)).reshape(groups * d1)
