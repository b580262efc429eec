"""Squeeze-and-excitation on CNHW activations.

s = mean_HW(x) (C, N); h = act(Wr @ s + br) (r, N); g = gate(We @ h + be) (C, N);
y = x * g. The two 1x1 convs act on a 1x1 map, so they are plain matrix products with
the canonical (out, in, 1, 1) kernels reshaped to (out, in). The gate is sigmoid or
hard_sigmoid = relu6(z + 3) / 6 (derivative 1/6 on (-3, 3), 0 outside, as torch's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import activation_backward, activation_forward, sigmoid_backward, sigmoid_forward
from .planes import plane_dots, plane_means, scale_planes


def _hard_sigmoid_gate(z):
    return np.clip(z / 6.0 + 0.5, 0.0, 1.0), z


def _hard_sigmoid_gate_backward(dg, z):
    return dg * (((z > -3.0) & (z < 3.0)) / 6.0)


#: gate name -> (forward z -> (g, cache), backward (dg, cache) -> dz)
GATES = {"sigmoid": (sigmoid_forward, sigmoid_backward),
         "hard_sigmoid": (_hard_sigmoid_gate, _hard_sigmoid_gate_backward)}


@dataclass
class SECache:
    x: np.ndarray
    s: np.ndarray
    act_cache: object
    h: np.ndarray
    g: np.ndarray
    w_reduce: np.ndarray
    w_expand: np.ndarray
    gate: str = "sigmoid"
    gate_cache: object = None


def squeeze_excite_forward(x, w_reduce, b_reduce, w_expand, b_expand, *, activation: str, gate: str = "sigmoid"):
    """x (C, N, H, W); w_reduce (r, C, 1, 1), w_expand (C, r, 1, 1) -> (y, cache)."""
    c, n = x.shape[:2]
    wr = w_reduce.reshape(w_reduce.shape[0], c)
    we = w_expand.reshape(c, -1)
    s = plane_means(x)
    z = wr @ s + b_reduce[:, None]
    h, act_cache = activation_forward(activation, z)
    g, gate_cache = GATES[gate][0](we @ h + b_expand[:, None])
    y = scale_planes(x, g)
    return y, SECache(x, s, act_cache, h, g, wr, we, gate, gate_cache)


def squeeze_excite_backward(dy, cache: SECache, *, activation: str):
    """(dx, dw_reduce, db_reduce, dw_expand, db_expand)."""
    x, g = cache.x, cache.g
    c, hw = x.shape[0], x.shape[2] * x.shape[3]
    dg = plane_dots(dy, x)  # gate gradient: sum over H, W of dy * x
    dz2 = GATES[cache.gate][1](dg, cache.gate_cache)
    dwe = dz2 @ cache.h.T
    dbe = dz2.sum(axis=1)
    dh = cache.w_expand.T @ dz2
    dz = activation_backward(activation, dh, cache.act_cache)
    dwr = dz @ cache.s.T
    dbr = dz.sum(axis=1)
    ds = cache.w_reduce.T @ dz
    dx = scale_planes(dy, g, ds / hw)
    r = cache.w_reduce.shape[0]
    return dx, dwr.reshape(r, c, 1, 1), dbr, dwe.reshape(c, r, 1, 1), dbe
