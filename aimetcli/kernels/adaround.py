"""AdaRound (Nagel et al., ICML 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization") on second moments (numpy only).

One layer, one group: weight W [m, d] (m output channels of the group, d = input channels of
the group x kernel taps), grid scale s (per tensor, or per output channel) and AIMET offset o,
integers q in [0, steps]. AdaRound learns V [m, d] and rounds

    W~(V) = s * (clip(floor(W / s) + h(V) - o, 0, steps) + o)
    h(V)  = clip(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)         (rectified sigmoid)

with V initialised so that h(V) = frac(W / s) (W~ = W inside the grid), minimising

    L(V) = E_pos ||W~ x - W f||^2 + lambda * sum(1 - |2 h(V) - 1|^beta)

where, at every output position (sample x spatial position), x is the layer's input patch in the
model quantized up to the layer and f the same patch in the FP32 model (AIMET's default: input
from the quantized model, target the FP32 output; the bias cancels). Without an activation in
the loss the first term is a quadratic form in W~:

    N * E_pos ||W~ x - W f||^2 = tr(W~ G W~^T) - 2 tr(W~ C W^T) + tr(W F W^T)
    G = sum x x^T,  C = sum x f^T,  F = sum f f^T   (d x d, sums over the N positions)

so its gradient, 2 (W~ G - W C^T) / N, costs O(m d^2) per iteration whatever N is. The moments
are collected once (aimetcli/adaround.py); here they are given.

Schedule (AIMET's defaults, aimet_common / aimet_torch adaround_loss): lambda = 0.01, beta
annealed from 20 to 2 by a cosine after a warm start of 20% of the iterations during which
the regulariser is off, Adam with lr 1e-3 (torch's defaults: betas 0.9 / 0.999, eps 1e-8),
10,000 iterations for weights of 8 bits or more and 15,000 below. Final rounding: up where
h(V) >= 0.5 (V >= 0), as AIMET's hard rounding.

Where this differs from AIMET, and why:

* the gradient is exact over all the calibration positions at every iteration, where AIMET
  draws 32 samples per iteration (a stochastic gradient): deterministic, and cheaper here;
* no activation function in the loss (AIMET applies a following Relu / Clip / Sigmoid /
  Tanh / Softmax to both outputs): with it the loss is not a quadratic form of the moments;
* where the learned rounding's reconstruction loss (known exactly from the moments) exceeds
  round-to-nearest's, the layer keeps round-to-nearest: AdaRound's relaxation does not
  guarantee a better hard rounding (a 1 x 6 layer enumerated in tests/test_adaround.py: worse
  than nearest for 3 of 8 draws), and AIMET keeps whatever it learned;
* every layer of a chunk is optimised at once (the element-wise steps on one flat vector of
  all their weights), which is the same arithmetic as one layer at a time: Adam and the
  regulariser act on each weight alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from aimetcli.kernels.blas import single_threaded

ZETA = 1.1
GAMMA = -0.1


@dataclass(frozen=True)
class AdaroundParams:
    """AIMET's AdaroundParameters defaults (iterations None: :func:`default_iterations`)."""

    iterations: int | None = None
    reg_param: float = 0.01
    beta_range: tuple[float, float] = (20.0, 2.0)
    warm_start: float = 0.2
    lr: float = 1e-3


def default_iterations(bitwidth: int) -> int:
    """AIMET-ONNX's default: 15,000 iterations below 8-bit weights, 10,000 otherwise."""
    return 15000 if bitwidth < 8 else 10000


def rectified_sigmoid(v: np.ndarray) -> np.ndarray:
    """h(V) = clip(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)."""
    return np.clip(1.0 / (1.0 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(frac: np.ndarray) -> np.ndarray:
    """The V with h(V) = frac (0 <= frac < 1): -log((ZETA - GAMMA) / (frac - GAMMA) - 1)."""
    return -np.log((ZETA - GAMMA) / (np.asarray(frac, np.float64) - GAMMA) - 1.0)


def beta_at(iteration: int, iterations: int, params: AdaroundParams) -> float | None:
    """The regulariser's beta at ``iteration``, None during the warm start:
    beta = end + (start - end) / 2 * (1 + cos(pi * t)), t = (i - warm) / (iterations - warm)."""
    warm = params.warm_start * iterations
    if iteration < warm:
        return None
    start, end = params.beta_range
    t = (iteration - warm) / (iterations - warm)
    return end + 0.5 * (start - end) * (1.0 + math.cos(t * math.pi))


@dataclass
class LayerProblem:
    """One layer's rounding problem: weight ``w`` [g, m, d] (g groups), its grid, its moments.

    ``scale``: [g, m, 1] (per output channel) or [1, 1, 1]; ``low``/``high`` (same shape): the
    grid's integers relative to zero, offset and offset + steps (W~ = scale * k, low <= k <= high).
    ``gram`` G, ``cross`` C: [g, d, d] sums over ``positions`` output positions; ``energy``:
    tr(W F W^T) = sum ||W f||^2, the loss's constant (only the reported losses need it).
    """

    w: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray
    gram: np.ndarray
    cross: np.ndarray
    energy: float
    positions: int

    def loss(self, k: np.ndarray) -> float:
        """E_pos ||W~ x - W f||^2 (summed over output channels) for W~ = scale * k, float64."""
        wq = self.scale.astype(np.float64) * k
        w = self.w.astype(np.float64)
        total = (np.einsum("gmd,gde,gme->", wq, self.gram, wq) - 2 * np.einsum("gmd,gde,gme->", wq, self.cross, w)
                 + self.energy)
        return float(max(total, 0.0) / max(self.positions, 1))

    def nearest(self) -> np.ndarray:
        """Integers of round-to-nearest (half to even, as QuantizeLinear) on the grid."""
        return np.clip(np.rint(self.w.astype(np.float64) / self.scale), self.low, self.high)


@dataclass
class LayerRounding:
    k: np.ndarray  # [g, m, d] integers relative to zero: W~ = scale * k
    loss_nearest: float
    loss_adaround: float
    changed: int  # weights rounded the other way than to nearest


@dataclass
class _Slot:
    problem: LayerProblem
    start: int
    stop: int
    gram: np.ndarray = field(repr=False)  # 2 G / N, float32
    linear: np.ndarray = field(repr=False)  # 2 W C^T / N, float32


def optimize(problems: list[LayerProblem], params: AdaroundParams = AdaroundParams(), *,
             iterations: int | None = None, on_iteration=None) -> list[LayerRounding]:
    """AdaRound every problem (independently; computed together, see the module docstring).

    ``iterations``: overrides ``params.iterations`` (which, when None, must be given here).
    Deterministic: no random draws; float32 state as AIMET's.
    """
    iterations = iterations if iterations is not None else params.iterations
    if not iterations or iterations < 1:
        raise ValueError("AdaRound needs a positive number of iterations")
    if not problems:
        return []
    slots, pos = [], 0
    for p in problems:
        n = p.w.size
        scale_n = max(p.positions, 1)
        linear = np.einsum("gmd,ged->gme", p.w.astype(np.float64), p.cross) * (2.0 / scale_n)
        slots.append(_Slot(p, pos, pos + n, (p.gram * (2.0 / scale_n)).astype(np.float32), linear.astype(np.float32)))
        pos += n
    total = pos
    ratio = np.concatenate([(p.w.astype(np.float64) / p.scale).reshape(-1) for p in problems])
    floor = np.floor(ratio)
    frac = ratio - floor
    scale = np.concatenate([np.broadcast_to(p.scale, p.w.shape).reshape(-1) for p in problems]).astype(np.float32)
    low = np.concatenate([np.broadcast_to(p.low, p.w.shape).reshape(-1) for p in problems]).astype(np.float32)
    high = np.concatenate([np.broadcast_to(p.high, p.w.shape).reshape(-1) for p in problems]).astype(np.float32)
    floor32 = floor.astype(np.float32)
    v = initial_v(frac).astype(np.float32)
    m1 = np.zeros(total, np.float32)
    m2 = np.zeros(total, np.float32)
    f32 = np.float32
    sig, h, x, grad, tmp = (np.empty(total, np.float32) for _ in range(5))
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, params.lr
    with single_threaded():  # small products: OpenBLAS's threads only wait for each other
        for it in range(iterations):
            # h = rectified sigmoid of v, and where its clip passes the gradient
            np.negative(v, out=tmp)
            np.exp(tmp, out=tmp)
            tmp += f32(1.0)
            np.reciprocal(tmp, out=sig)
            np.multiply(sig, f32(ZETA - GAMMA), out=h)
            h += f32(GAMMA)
            h_inside = (h > 0) & (h < 1)
            np.clip(h, 0, 1, out=h)
            # soft-rounded weight, and where the grid's clip passes the gradient
            np.add(floor32, h, out=x)
            x_inside = (x >= low) & (x <= high)
            np.clip(x, low, high, out=x)
            x *= scale
            for s in slots:  # reconstruction gradient: 2 (W~ G - W C^T) / N, per layer
                p = s.problem
                out = grad[s.start:s.stop].reshape(p.w.shape)
                np.matmul(x[s.start:s.stop].reshape(p.w.shape), s.gram, out=out)
                out -= s.linear
            grad *= scale
            grad *= x_inside
            beta = beta_at(it, iterations, params)
            if beta is not None:  # d/dh of lambda * (1 - |2h - 1|^beta) = -2 lambda beta |u|^(beta-1) sign(u)
                np.multiply(h, f32(2.0), out=tmp)
                tmp -= f32(1.0)
                sign = np.sign(tmp)
                np.abs(tmp, out=tmp)
                np.power(tmp, f32(beta - 1.0), out=tmp)
                tmp *= sign
                tmp *= f32(-2.0 * params.reg_param * beta)
                grad += tmp
            # dh/dv = (ZETA - GAMMA) sigmoid (1 - sigmoid) inside the clip
            np.subtract(f32(1.0), sig, out=tmp)
            tmp *= sig
            tmp *= f32(ZETA - GAMMA)
            tmp *= h_inside
            grad *= tmp
            # Adam (torch's: bias-corrected moments, eps added to the corrected root)
            m1 *= f32(b1)
            m1 += f32(1 - b1) * grad
            m2 *= f32(b2)
            np.multiply(grad, grad, out=tmp)
            tmp *= f32(1 - b2)
            m2 += tmp
            c1 = 1 - b1 ** (it + 1)
            c2 = 1 - b2 ** (it + 1)
            np.sqrt(m2, out=tmp)
            tmp *= f32(1 / math.sqrt(c2))
            tmp += f32(eps)
            np.divide(m1, tmp, out=tmp)
            tmp *= f32(lr / c1)
            v -= tmp
            if on_iteration is not None:
                on_iteration(it)
    up = v >= 0
    k_all = np.clip(floor + up, low, high)
    nearest_all = np.concatenate([p.nearest().reshape(-1) for p in problems])
    out = []
    for s in slots:
        p = s.problem
        k = k_all[s.start:s.stop].reshape(p.w.shape)
        near = nearest_all[s.start:s.stop].reshape(p.w.shape)
        loss_near, loss_k = p.loss(near), p.loss(k)
        if loss_k > loss_near:  # the objective is known exactly: never return worse than nearest
            k, loss_k = near, loss_near
        out.append(LayerRounding(k.astype(np.int64), loss_near, loss_k, int(np.count_nonzero(k != near))))
    return out
