"""Fused per-channel elementwise kernels (Numba) for batch norm and SiLU, with NumPy twins.

Rows are channels of a CNHW activation viewed as (C, n). Each kernel is one streaming
pass where NumPy would need three to five (and as many temporaries); at the larger
image sizes these passes are memory-bound, so the fusion is what pays. Reductions stay
in NumPy (pairwise summation), so every kernel is a dependency-free loop that LLVM
vectorises without fastmath. The SiLU forward, with its own exp, is kernels/silu.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(["void(float32[:, ::1], float32[::1], float32[::1], float32[::1], float32[:, ::1])",
       "void(float64[:, ::1], float64[::1], float64[::1], float64[::1], float64[:, ::1])"], cache=True, nogil=True)
def bn_normalize_kernel(xhat, inv_std, gamma, beta, y):
    """In place xhat *= inv_std[c] (xhat holds x - mean on entry); y = xhat * gamma[c] + beta[c]."""
    for c in range(xhat.shape[0]):
        s, g, b = inv_std[c], gamma[c], beta[c]
        xr, yr = xhat[c], y[c]
        for m in range(xr.shape[0]):
            v = xr[m] * s
            xr[m] = v
            yr[m] = v * g + b


@njit(["void(float32[:, ::1], float32[::1], float32[::1], float32[:, ::1])",
       "void(float64[:, ::1], float64[::1], float64[::1], float64[:, ::1])"], cache=True, nogil=True)
def affine_rows_kernel(x, scale, shift, y):
    """y = x * scale[c] + shift[c] per row c (eval-mode batch norm with its folded constants)."""
    for c in range(x.shape[0]):
        a, b = scale[c], shift[c]
        xr, yr = x[c], y[c]
        for m in range(xr.shape[0]):
            yr[m] = xr[m] * a + b


@njit(["void(float32[:, ::1], float32[:, ::1], float32[::1], float32[::1], float32[::1], float32[:, ::1])",
       "void(float64[:, ::1], float64[:, ::1], float64[::1], float64[::1], float64[::1], float64[:, ::1])"],
      cache=True, nogil=True)
def bn_backward_dx_kernel(dy, xhat, scale, mean_dy, mean_dy_xhat, dx):
    """dx = scale[c] * (dy - mean_dy[c] - xhat * mean_dy_xhat[c])."""
    for c in range(dy.shape[0]):
        s, a, b = scale[c], mean_dy[c], mean_dy_xhat[c]
        dr, xr, out = dy[c], xhat[c], dx[c]
        for m in range(dr.shape[0]):
            out[m] = s * (dr[m] - a - xr[m] * b)


@njit(["void(float32[::1], float32[::1], float32[::1], float32[::1])",
       "void(float64[::1], float64[::1], float64[::1], float64[::1])"], cache=True, nogil=True)
def silu_backward_kernel(dy, x, s, dx):
    """dx = dy * s * (1 + x * (1 - s)) with s = sigmoid(x) (flat arrays)."""
    for m in range(dy.shape[0]):
        sv = s[m]
        dx[m] = dy[m] * sv * (1.0 + x[m] * (1.0 - sv))


# ---- NumPy twins ----------------------------------------------------------------------------
def affine_rows_naive(x, scale, shift):
    return x * scale[:, None] + shift[:, None]


def bn_normalize_naive(centred, inv_std, gamma, beta):
    xhat = centred * inv_std[:, None]
    return xhat, xhat * gamma[:, None] + beta[:, None]


def bn_backward_dx_naive(dy, xhat, scale, mean_dy, mean_dy_xhat):
    return scale[:, None] * (dy - mean_dy[:, None] - xhat * mean_dy_xhat[:, None])


def silu_backward_naive(dy, x, s):
    return dy * s * (1.0 + x * (1.0 - s))
