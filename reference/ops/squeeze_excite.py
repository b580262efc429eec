"""Squeeze-and-excitation on CNHW activations.

s = mean_HW(x) (C, N); h = act(Wr @ s + br) (r, N); g = sigmoid(We @ h + be) (C, N);
y = x * g. The two 1x1 convs act on a 1x1 map, so they are plain matrix products with
the canonical (out, in, 1, 1) kernels reshaped to (out, in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import activation_backward, activation_forward, sigmoid


@dataclass
class SECache:
    x: np.ndarray
    s: np.ndarray
    act_cache: object
    h: np.ndarray
    g: np.ndarray
    w_reduce: np.ndarray
    w_expand: np.ndarray


def squeeze_excite_forward(x, w_reduce, b_reduce, w_expand, b_expand, *, activation: str):
    """x (C, N, H, W); w_reduce (r, C, 1, 1), w_expand (C, r, 1, 1) -> (y, cache)."""
    c, n = x.shape[:2]
    wr = w_reduce.reshape(w_reduce.shape[0], c)
    we = w_expand.reshape(c, -1)
    s = x.reshape(c, n, -1).mean(axis=2)
    z = wr @ s + b_reduce[:, None]
    h, act_cache = activation_forward(activation, z)
    g = sigmoid(we @ h + b_expand[:, None])
    y = x * g[:, :, None, None]
    return y, SECache(x, s, act_cache, h, g, wr, we)


def squeeze_excite_backward(dy, cache: SECache, *, activation: str):
    """(dx, dw_reduce, db_reduce, dw_expand, db_expand)."""
    x, g = cache.x, cache.g
    c, n = x.shape[:2]
    hw = x.shape[2] * x.shape[3]
    # gate gradient: sum over H, W of dy * x
    dg = np.einsum("cnk,cnk->cn", dy.reshape(c, n, hw), x.reshape(c, n, hw))
    dz2 = dg * g * (1.0 - g)
    dwe = dz2 @ cache.h.T
    dbe = dz2.sum(axis=1)
    dh = cache.w_expand.T @ dz2
    dz = activation_backward(activation, dh, cache.act_cache)
    dwr = dz @ cache.s.T
    dbr = dz.sum(axis=1)
    ds = cache.w_reduce.T @ dz
    dx = dy * g[:, :, None, None]
    dx += (ds / hw)[:, :, None, None]
    r = cache.w_reduce.shape[0]
    return dx, dwr.reshape(r, c, 1, 1), dbr, dwe.reshape(c, r, 1, 1), dbe
