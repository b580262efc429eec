"""Train-mode batch norm followed by SiLU, fused (Numba): the pair behind most convolutions of the network.

Separately, BN writes xhat and y, SiLU reads y and writes sigmoid(y) and its output, and the backward
runs three passes (SiLU's derivative into a gradient array, BN's two gradient sums over it, then
dx). Fused, per row (a channel, or a channel's statistics group):

- forward: one pass reads x and writes xhat, s = sigmoid(y) and silu(y), with y = xhat * gamma + beta
  kept in a row of scratch (the SiLU kernel runs on it);
- eval forward without a tape (running statistics folded into one scale and shift per channel): one
  pass reads x and writes silu(x * scale + shift), where the two ops apart wrote y and then s and silu(y);
- backward: the SiLU derivative of the row goes into a row of scratch, from y recomputed from xhat
  (the same operations as the forward, so the same bits as a stored y), BN's two float64 sums run
  over that scratch row while it is in cache, and, when the row is a whole statistics group, dx
  follows straight away: one pass reads dy, xhat and s and writes dx. A group that spans processes
  needs the other processes' sums first, so there the derivative rows are written out and dx waits
  for the exchange (`silu_grad_sums_kernel`, then `elementwise.bn_span_backward_dx_kernel`).

Every value is rounded exactly as by the unfused kernels (elementwise.bn_center_normalize_kernel or
elementwise.affine_rows_kernel, silu.silu_exp_forward_kernel, elementwise.silu_backward_kernel,
bn_grad_sums_kernel and bn_backward_dx_kernel, in that order): tests/reference/test_kernels_bn_silu.py checks the bits.

Numba caches a kernel by its own file: after editing a helper imported here (silu_exp_forward_kernel,
_row_sum, _row_dot, _bn_dx_row), clear NUMBA_CACHE_DIR or touch this file.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .elementwise import (_bn_dx_row, _row_dot, _row_sum, affine_rows_naive, bn_backward_dx_naive,
                          bn_center_normalize_naive, row_dots_naive, row_sum_naive)
from .silu import silu_exp_forward_kernel, silu_exp_forward_naive


@njit(["void(float32[:, ::1], float32[::1], float32[::1], float32[::1], float32[::1], float32[:, ::1], "
       "float32[:, ::1], float32[:, ::1], float32[::1])",
       "void(float64[:, ::1], float64[::1], float64[::1], float64[::1], float64[::1], float64[:, ::1], "
       "float64[:, ::1], float64[:, ::1], float64[::1])"],
      cache=True, nogil=True, error_model="numpy")
def bn_silu_forward_kernel(x, mean, inv_std, gamma, beta, xhat, s, out, c):
    """Per row r: xhat = (x - mean[r]) * inv_std[r]; y = xhat * gamma[r] + beta[r]; s = sigmoid(y);
    out = y * s. c: `silu.silu_constants(dtype)`; y lives in one row of scratch, and the SiLU kernel runs on
    it as its own function: it is compiled with FMA contraction, which the BN part here must not get (its
    bits are those of the unfused elementwise.bn_center_normalize_kernel)."""
    m = x.shape[1]
    y = np.empty(m, x.dtype)
    for row in range(x.shape[0]):
        mu, sd, g, b = mean[row], inv_std[row], gamma[row], beta[row]
        xr, hr = x[row], xhat[row]
        for i in range(m):
            v = (xr[i] - mu) * sd
            hr[i] = v
            y[i] = v * g + b
        silu_exp_forward_kernel(y, s[row], out[row], c)


_EVAL_BLOCK = 2048  # values of a row per step of the eval kernel: its y and s scratch stay in L1


@njit(["void(float32[:, ::1], float32[::1], float32[::1], float32[:, ::1], float32[::1])",
       "void(float64[:, ::1], float64[::1], float64[::1], float64[:, ::1], float64[::1])"],
      cache=True, nogil=True, error_model="numpy")
def affine_silu_forward_kernel(x, scale, shift, out, c):
    """Per row r: out = silu(x * scale[r] + shift[r]), eval-mode BN (its folded constants) then SiLU, in
    blocks of a row: y = x * scale + shift into a block of scratch, uncontracted as in
    elementwise.affine_rows_kernel, then the SiLU kernel (its own function, compiled with FMA contraction)
    from that block into out, its sigmoid into a second block of scratch that nothing reads."""
    m = x.shape[1]
    block = max(1, min(m, _EVAL_BLOCK))  # rows of no values (an empty batch) leave out untouched, as it is empty
    y = np.empty(block, x.dtype)
    s = np.empty(block, x.dtype)
    for row in range(x.shape[0]):
        a, b = scale[row], shift[row]
        for lo in range(0, m, block):
            n = min(block, m - lo)
            # loops over views that start at 0: indexing the row at lo + i left this loop 2.4x slower
            xs, ys = x[row, lo:lo + n], y[:n]
            for i in range(n):
                ys[i] = xs[i] * a + b
            silu_exp_forward_kernel(ys, s[:n], out[row, lo:lo + n], c)


@njit(inline="always")
def _silu_grad_row(dy, xhat, s, g, b, out):
    """out = the SiLU derivative applied to dy at y = xhat * g + b (elementwise.silu_backward_kernel's
    expression: the literals make it float64 before the one rounding at the store)."""
    for m in range(dy.shape[0]):
        sv = s[m]
        y = xhat[m] * g + b
        out[m] = dy[m] * sv * (1.0 + y * (1.0 - sv))


@njit(["void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[::1], float32[::1], float32[::1], "
       "float32, float32[::1], float32[:, ::1], float32[::1], float32[::1])",
       "void(float64[:, ::1], float64[:, ::1], float64[:, ::1], float64[::1], float64[::1], float64[::1], "
       "float64, float64[::1], float64[:, ::1], float64[::1], float64[::1])"], cache=True, nogil=True)
def bn_silu_backward_kernel(dy, xhat, s, gamma, beta, inv_std, n, grow, dx, dbeta, dgamma):
    """Per row r, a whole statistics group of n values: g = the SiLU derivative applied to dy (in the
    scratch row `grow`), dbeta[r] = sum g, dgamma[r] = sum g * xhat (float64 sums rounded to the dtype),
    dx = gamma[r] * inv_std[r] * (g - dbeta[r] / n - xhat * dgamma[r] / n)."""
    for row in range(dy.shape[0]):
        xr = xhat[row]
        _silu_grad_row(dy[row], xr, s[row], gamma[row], beta[row], grow)
        dbeta[row] = _row_sum(grow)
        dgamma[row] = _row_dot(grow, xr)
        _bn_dx_row(grow, xr, gamma[row] * inv_std[row], dbeta[row] / n, dgamma[row] / n, dx[row])


@njit(["void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[::1], float32[::1], float32[:, ::1], "
       "float32[:, ::1])",
       "void(float64[:, ::1], float64[:, ::1], float64[:, ::1], float64[::1], float64[::1], float64[:, ::1], "
       "float64[:, ::1])"], cache=True, nogil=True)
def silu_grad_sums_kernel(dy, xhat, s, gamma, beta, g, sums):
    """For a statistics group spanning processes, this process's part: g = the SiLU derivative applied to
    dy (written out: dx needs it after the exchange), sums[0, r] = sum g, sums[1, r] = sum g * xhat."""
    for row in range(dy.shape[0]):
        gr = g[row]
        _silu_grad_row(dy[row], xhat[row], s[row], gamma[row], beta[row], gr)
        sums[0, row] = _row_sum(gr)
        sums[1, row] = _row_dot(gr, xhat[row])


# ---- NumPy twins: the unfused NumPy twins in turn (the SiLU forward by NumPy's exp: to silu.py's tolerance;
# the rest rounded where the kernels round, so the same bits for the same s) ------------------------------
def bn_silu_forward_naive(x, mean, inv_std, gamma, beta):
    """(xhat, s, out) of `bn_silu_forward_kernel`."""
    xhat, y = bn_center_normalize_naive(x, mean, inv_std, gamma, beta)
    s, out = silu_exp_forward_naive(y)
    return xhat, s, out


def affine_silu_forward_naive(x, scale, shift):
    return silu_exp_forward_naive(affine_rows_naive(x, scale, shift))[1]


def _silu_grad_naive(dy, xhat, s, gamma, beta):
    """`_silu_grad_row` per row: dy * s rounded to the dtype, the rest in float64, one rounding at the end."""
    y = (xhat * gamma[:, None] + beta[:, None]).astype(np.float64)
    s64 = s.astype(np.float64)
    return ((dy * s).astype(np.float64) * (1.0 + y * (1.0 - s64))).astype(dy.dtype)


def silu_grad_sums_naive(dy, xhat, s, gamma, beta):
    """(g, sums) of `silu_grad_sums_kernel`."""
    g = _silu_grad_naive(dy, xhat, s, gamma, beta)
    sums = np.array([[row_sum_naive(r) for r in g], list(row_dots_naive(g, xhat))]).astype(dy.dtype)
    return g, sums


def bn_silu_backward_naive(dy, xhat, s, gamma, beta, inv_std, n):
    """(dx, dbeta, dgamma) of `bn_silu_backward_kernel`."""
    g, (dbeta, dgamma) = silu_grad_sums_naive(dy, xhat, s, gamma, beta)
    n = dy.dtype.type(n)
    return bn_backward_dx_naive(g, xhat, gamma * inv_std, dbeta / n, dgamma / n), dbeta, dgamma


# compiled entry point -> its NumPy twin (tests/reference/test_kernel_twins.py holds every module to its table)
TWINS = {"bn_silu_forward_kernel": "bn_silu_forward_naive", "affine_silu_forward_kernel": "affine_silu_forward_naive",
         "bn_silu_backward_kernel": "bn_silu_backward_naive", "silu_grad_sums_kernel": "silu_grad_sums_naive"}
