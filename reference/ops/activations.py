"""Activations and their derivatives: silu, relu, relu6, hard_swish (and sigmoid for SE).

Each forward returns (y, cache) where the cache is what the derivative needs; backward
takes (dy, cache). Derivatives at the kinks follow PyTorch (relu'(0) = 0, relu6'(6) = 0,
hard_swish'(-3) = -0.5, hard_swish'(3) = 1.5): only measure-zero points differ anyway.
"""

from __future__ import annotations

import numpy as np

from ..kernels.network.elementwise import silu_backward_kernel
from ..kernels.runtime.pool import parallel_for
from ..kernels.network.silu import silu_exp_forward

_ALIGN = 1024  # flat chunks start on 4 KiB boundaries (float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)); exp overflow for very negative x gives the correct limit 0."""
    out = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


def sigmoid_forward(x):
    s = sigmoid(x)
    return s, s


def sigmoid_backward(dy, s):
    return dy * s * (1.0 - s)


def silu_forward(x):
    if x.dtype in (np.float32, np.float64):
        x = np.ascontiguousarray(x)
        s = np.empty_like(x)
        y = np.empty_like(x)
        xf, sf, yf = x.reshape(-1), s.reshape(-1), y.reshape(-1)
        # exp, sigmoid and product in one pass
        parallel_for(lambda lo, hi: silu_exp_forward(xf[lo:hi], sf[lo:hi], yf[lo:hi]), xf.shape[0], align=_ALIGN)
        return y, (x, s)
    s = sigmoid(x)
    return x * s, (x, s)


def silu_backward(dy, cache):
    x, s = cache
    # d/dx x*s = s + x*s*(1-s) = s * (1 + x*(1-s)), fused into one pass
    if dy.dtype == x.dtype == s.dtype and dy.dtype in (np.float32, np.float64):
        dx = np.empty(x.shape, dtype=x.dtype)
        dyf, xf, sf, dxf = (np.ascontiguousarray(dy).reshape(-1), np.ascontiguousarray(x).reshape(-1),
                            np.ascontiguousarray(s).reshape(-1), dx.reshape(-1))
        parallel_for(lambda lo, hi: silu_backward_kernel(dyf[lo:hi], xf[lo:hi], sf[lo:hi], dxf[lo:hi]), xf.shape[0],
                     align=_ALIGN)
        return dx
    return dy * s * (1.0 + x * (1.0 - s))


def relu_forward(x):
    return np.maximum(x, 0), x


def relu_backward(dy, x):
    return dy * (x > 0)


def relu6_forward(x):
    return np.clip(x, 0, 6), x


def relu6_backward(dy, x):
    return dy * ((x > 0) & (x < 6))


def hard_swish_forward(x):
    return x * np.clip(x + 3, 0, 6) / 6, x


def hard_swish_backward(dy, x):
    # x < -3: 0;  -3 <= x <= 3: (2x + 3) / 6;  x > 3: 1  (PyTorch's choice at the kinks)
    g = np.where(x < -3, 0.0, np.where(x <= 3, (2 * x + 3) / 6, 1.0)).astype(x.dtype)
    return dy * g


ACTIVATIONS = {
    "silu": (silu_forward, silu_backward),
    "relu": (relu_forward, relu_backward),
    "relu6": (relu6_forward, relu6_backward),
    "hard_swish": (hard_swish_forward, hard_swish_backward),
}


def activation_forward(name: str, x: np.ndarray):
    """Apply activation `name`: returns (y, cache)."""
    try:
        fwd = ACTIVATIONS[name][0]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; available: {', '.join(ACTIVATIONS)}") from None
    return fwd(x)


def activation_backward(name: str, dy: np.ndarray, cache) -> np.ndarray:
    return ACTIVATIONS[name][1](dy, cache)
