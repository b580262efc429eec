"""Fused per-channel elementwise kernels (Numba) for batch norm and SiLU, with NumPy twins.

Rows are channels of a CNHW activation viewed as (C, n). Each kernel is one streaming
pass where NumPy would need three to five (and as many temporaries); at the larger
image sizes these passes are memory-bound, so the fusion is what pays. The elementwise
kernels are dependency-free loops that LLVM vectorises without fastmath. The two row
reductions of batch norm (`bn_moments_kernel`, `bn_grad_sums_kernel`) accumulate in float64
over 8 interleaved partial sums, a fixed association, computed as the lanes of one vector
(kernels/network/lanes.py: LLVM left 8 scalar accumulators scalar): at the
small sizes of the CPU training runs (rows of 128-2048 values) NumPy's mean / einsum cost
more in call overhead than in arithmetic (13% of a 16 px step). The SiLU forward, with its
own exp, is kernels/network/silu.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .lanes import (LANES, lanes_centred_squares, lanes_centred_squares_naive, lanes_dot, lanes_dot_naive, lanes_sum,
                    lanes_sum_naive)


@njit(["void(float32[:, ::1], float32[::1], float32[::1], float32[:, ::1])",
       "void(float64[:, ::1], float64[::1], float64[::1], float64[:, ::1])"], cache=True, nogil=True)
def affine_rows_kernel(x, scale, shift, y):
    """y = x * scale[c] + shift[c] per row c (eval-mode batch norm with its folded constants)."""
    for c in range(x.shape[0]):
        a, b = scale[c], shift[c]
        xr, yr = x[c], y[c]
        for m in range(xr.shape[0]):
            yr[m] = xr[m] * a + b


@njit(inline="always")
def _bn_dx_row(dr, xr, s, a, b, out):
    for m in range(dr.shape[0]):
        out[m] = s * (dr[m] - a - xr[m] * b)


@njit(["void(float32[:, ::1], float32[:, ::1], float32[::1], float32[::1], float32[::1], float32[:, ::1])",
       "void(float64[:, ::1], float64[:, ::1], float64[::1], float64[::1], float64[::1], float64[:, ::1])"],
      cache=True, nogil=True)
def bn_backward_dx_kernel(dy, xhat, scale, mean_dy, mean_dy_xhat, dx):
    """dx = scale[c] * (dy - mean_dy[c] - xhat * mean_dy_xhat[c])."""
    for c in range(dy.shape[0]):
        _bn_dx_row(dy[c], xhat[c], scale[c], mean_dy[c], mean_dy_xhat[c], dx[c])


@njit(["void(float32[:, ::1], float32[:, ::1], float32[::1], float32[::1], float32[:, ::1], float32, "
       "float32[:, ::1])",
       "void(float64[:, ::1], float64[:, ::1], float64[::1], float64[::1], float64[:, ::1], float64, "
       "float64[:, ::1])"], cache=True, nogil=True)
def bn_span_backward_dx_kernel(dy, xhat, gamma, inv_std, sums, n, dx):
    """bn_backward_dx_kernel for a group spanning processes, its per-channel factors made here from the
    group's sums (2, C) of dy and dy * xhat over its n values: scale = gamma * inv_std, mean_dy = sums[0] / n,
    mean_dy_xhat = sums[1] / n, each rounded to the dtype as the NumPy expressions are (`bn_span_backward_naive`)."""
    for c in range(dy.shape[0]):
        _bn_dx_row(dy[c], xhat[c], gamma[c] * inv_std[c], sums[0, c] / n, sums[1, c] / n, dx[c])


@njit(["void(float32[:, :, ::1], float32, float32, float32, float32, float32[::1], float32[::1], float32[::1])",
       "void(float64[:, :, ::1], float64, float64, float64, float64, float64[::1], float64[::1], float64[::1])"],
      cache=True, nogil=True)
def bn_span_moments_kernel(parts, span, m, n, eps, mean, var, inv_std):
    """A BN group's statistics from the parts (span, 2, C) its `span` processes sent: row 0 each one's mean
    of its m values per channel, row 1 its centred sum of squares; n = m * span. Chan's combination:
    mean = sum of the means / span; var = (sum of the sums of squares + m * sum of (mean_q - mean)^2) / n;
    inv_std = 1 / sqrt(var + eps). Every scalar arrives in the dtype; each operation rounds to it, the
    sums over processes in rank order (`bn_span_moments_naive`, the NumPy expressions, is its twin)."""
    one = span / span  # 1 in the dtype (a literal 1 would turn the division below into float64)
    for c in range(parts.shape[2]):
        total = parts[0, 0, c]
        for q in range(1, parts.shape[0]):
            total += parts[q, 0, c]
        mu = total / span
        d = parts[0, 0, c] - mu
        shifts = d * d
        squares = parts[0, 1, c]
        for q in range(1, parts.shape[0]):
            d = parts[q, 0, c] - mu
            shifts += d * d
            squares += parts[q, 1, c]
        v = (squares + m * shifts) / n
        mean[c], var[c] = mu, v
        inv_std[c] = one / np.sqrt(v + eps)


@njit(["void(float32[::1], float32[::1], float32[::1], float32[::1])",
       "void(float64[::1], float64[::1], float64[::1], float64[::1])"], cache=True, nogil=True)
def silu_backward_kernel(dy, x, s, dx):
    """dx = dy * s * (1 + x * (1 - s)) with s = sigmoid(x) (flat arrays)."""
    for m in range(dy.shape[0]):
        sv = s[m]
        dx[m] = dy[m] * sv * (1.0 + x[m] * (1.0 - sv))


@njit(inline="always")
def _row_sum(r):
    """sum of r as float64, over 8 interleaved partial sums (a fixed order: deterministic; the partials
    are the lanes of one vector, kernels/network/lanes.py), then the values past the last multiple of 8."""
    n = r.shape[0]
    tail = 0.0
    for i in range(n - n % LANES, n):
        tail += r[i]
    return lanes_sum(r) + tail


@njit(inline="always")
def _row_dot(a, b):
    """sum of a * b (each product in float64), over 8 interleaved partial sums like _row_sum."""
    n = a.shape[0]
    tail = 0.0
    for i in range(n - n % LANES, n):
        tail += np.float64(a[i]) * b[i]
    return lanes_dot(a, b) + tail


@njit(inline="always")
def _row_centred_squares(r, mu):
    """sum of (r - mu)^2: each r - mu rounded to r's dtype, squared in float64, over 8 interleaved partial
    sums like _row_sum (the bits of _row_dot(centred, centred), without storing the centred row)."""
    n = r.shape[0]
    tail = 0.0
    for i in range(n - n % LANES, n):
        d = r[i] - mu
        tail += np.float64(d) * d
    return lanes_centred_squares(r, mu) + tail


@njit(["void(float32[:, ::1], float32[::1], float32[::1])", "void(float64[:, ::1], float64[::1], float64[::1])"],
      cache=True, nogil=True)
def bn_moments_kernel(x, mean, var):
    """Per row c: mean[c] = mean of x[c] (float64 sum, rounded to the dtype); var[c] = mean of (x[c] - mean[c])^2,
    the biased variance (each difference rounded to the dtype, squared and summed in float64). No centred copy
    is written: `bn_center_normalize_kernel` centres while it normalises, on this process's mean or, for a
    group spanning processes, on the group's."""
    m = x.shape[1]
    for c in range(x.shape[0]):
        mean[c] = _row_sum(x[c]) / m
        var[c] = _row_centred_squares(x[c], mean[c]) / m


@njit(["void(float32[:, ::1], float32[::1], float32[::1], float32[::1], float32[::1], float32[:, ::1], "
       "float32[:, ::1])",
       "void(float64[:, ::1], float64[::1], float64[::1], float64[::1], float64[::1], float64[:, ::1], "
       "float64[:, ::1])"], cache=True, nogil=True)
def bn_center_normalize_kernel(x, mean, inv_std, gamma, beta, xhat, y):
    """xhat = (x - mean[c]) * inv_std[c]; y = xhat * gamma[c] + beta[c], each operation rounded to the dtype."""
    for c in range(x.shape[0]):
        mu, s, g, b = mean[c], inv_std[c], gamma[c], beta[c]
        xr, hr, yr = x[c], xhat[c], y[c]
        for m in range(xr.shape[0]):
            v = (xr[m] - mu) * s
            hr[m] = v
            yr[m] = v * g + b


@njit(["void(float32[:, ::1], float32[:, ::1], float32[::1], float32[::1])",
       "void(float64[:, ::1], float64[:, ::1], float64[::1], float64[::1])"], cache=True, nogil=True)
def bn_grad_sums_kernel(dy, xhat, dbeta, dgamma):
    """Per row c: dbeta[c] = sum of dy[c]; dgamma[c] = sum of dy[c] * xhat[c] (float64 sums)."""
    for c in range(dy.shape[0]):
        dbeta[c] = _row_sum(dy[c])
        dgamma[c] = _row_dot(dy[c], xhat[c])


@njit(["void(float32[::1], float32[::1], float32[::1], float32[::1], float32, float32, float32)",
       "void(float64[::1], float64[::1], float64[::1], float64[::1], float64, float64, float64)"],
      cache=True, nogil=True)
def running_stats_kernel(running_mean, running_var, mean, var, keep, momentum, factor):
    """Per channel: r = r * keep + momentum * batch statistic (keep = 1 - momentum), the variance first
    multiplied by `factor` (n / (n - 1) for the unbiased convention, else 1, which changes no bit): the
    NumPy in-place updates of ops/batchnorm.py, each operation rounded to the dtype as there."""
    for c in range(mean.shape[0]):
        running_mean[c] = running_mean[c] * keep
        running_mean[c] = running_mean[c] + momentum * mean[c]
        running_var[c] = running_var[c] * keep
        running_var[c] = running_var[c] + momentum * (var[c] * factor)


@njit(["void(float32[:, ::1], float32[::1])", "void(float64[:, ::1], float64[::1])"], cache=True, nogil=True)
def row_means_kernel(x, out):
    """out[p] = mean of row p (float64 sum): squeeze-excite's and the head's average over H x W."""
    for p in range(x.shape[0]):
        out[p] = _row_sum(x[p]) / x.shape[1]


@njit(["void(float32[:, ::1], float32[:, ::1], float32[::1])", "void(float64[:, ::1], float64[:, ::1], float64[::1])"],
      cache=True, nogil=True)
def row_dots_kernel(a, b, out):
    """out[p] = sum of a[p] * b[p] (float64 sum): the gradient of squeeze-excite's gate."""
    for p in range(a.shape[0]):
        out[p] = _row_dot(a[p], b[p])


# ---- NumPy twins ----------------------------------------------------------------------------
def bn_moments_naive(x):
    """(mean, var) with float64 sums, rounded where the kernel rounds (the mean before centring)."""
    mean = x.astype(np.float64).mean(axis=1).astype(x.dtype)
    c64 = (x - mean[:, None]).astype(np.float64)
    return mean, (c64 * c64).mean(axis=1).astype(x.dtype)


def bn_center_normalize_naive(x, mean, inv_std, gamma, beta):
    xhat = (x - mean[:, None]) * inv_std[:, None]
    return xhat, xhat * gamma[:, None] + beta[:, None]


def bn_span_moments_naive(parts, m: int, eps: float):
    """(mean, var, inv_std) of `bn_span_moments_kernel` by NumPy (what ops/batchnorm.py computed before)."""
    span, dt = parts.shape[0], parts.dtype
    mean = parts[:, 0].sum(axis=0) / span
    shift = parts[:, 0] - mean
    var = ((parts[:, 1].sum(axis=0) + m * (shift * shift).sum(axis=0)) / (m * span)).astype(dt)
    return mean.astype(dt), var, (1.0 / np.sqrt(var + eps)).astype(dt)


def bn_span_backward_naive(dy, xhat, gamma, inv_std, sums, n: int):
    return bn_backward_dx_naive(dy, xhat, gamma * inv_std, sums[0] / n, sums[1] / n)


def bn_grad_sums_naive(dy, xhat):
    d64 = dy.astype(np.float64)
    return d64.sum(axis=1).astype(dy.dtype), (d64 * xhat.astype(np.float64)).sum(axis=1).astype(dy.dtype)


def affine_rows_naive(x, scale, shift):
    return x * scale[:, None] + shift[:, None]


def bn_backward_dx_naive(dy, xhat, scale, mean_dy, mean_dy_xhat):
    return scale[:, None] * (dy - mean_dy[:, None] - xhat * mean_dy_xhat[:, None])


def silu_backward_naive(dy, x, s):
    return dy * s * (1.0 + x * (1.0 - s))


def _tail_naive(terms: np.ndarray) -> float:
    """The float64 terms past the last multiple of 8, added from 0.0 in turn (the kernels' scalar tail)."""
    tail = 0.0
    for t in terms[terms.shape[0] - terms.shape[0] % LANES:]:
        tail += float(t)
    return tail


def row_sum_naive(r: np.ndarray) -> float:
    return lanes_sum_naive(r) + _tail_naive(r.astype(np.float64))


def row_dot_naive(a: np.ndarray, b: np.ndarray) -> float:
    return lanes_dot_naive(a, b) + _tail_naive(a.astype(np.float64) * b.astype(np.float64))


def row_centred_squares_naive(r: np.ndarray, mu) -> float:
    d = (r - r.dtype.type(mu)).astype(np.float64)
    return lanes_centred_squares_naive(r, mu) + _tail_naive(d * d)


def row_means_naive(x):
    return np.array([row_sum_naive(r) / x.shape[1] for r in x]).astype(x.dtype)


def row_dots_naive(a, b):
    return np.array([row_dot_naive(p, q) for p, q in zip(a, b)]).astype(a.dtype)


def running_stats_naive(running_mean, running_var, mean, var, keep, momentum, factor):
    """The updated (running_mean, running_var): ops/batchnorm.py's in-place NumPy updates, in the dtype."""
    t = running_mean.dtype.type
    keep, momentum, factor = t(keep), t(momentum), t(factor)
    return running_mean * keep + momentum * mean, running_var * keep + momentum * (var * factor)


# compiled entry point -> its NumPy twin (tests/reference/test_kernel_twins.py holds every module to its table);
# the private row helpers are entry points too: kernels/network/bn_silu.py builds on them
TWINS = {"affine_rows_kernel": "affine_rows_naive", "bn_backward_dx_kernel": "bn_backward_dx_naive",
         "bn_span_backward_dx_kernel": "bn_span_backward_naive", "bn_span_moments_kernel": "bn_span_moments_naive",
         "silu_backward_kernel": "silu_backward_naive", "bn_moments_kernel": "bn_moments_naive",
         "bn_center_normalize_kernel": "bn_center_normalize_naive", "bn_grad_sums_kernel": "bn_grad_sums_naive",
         "running_stats_kernel": "running_stats_naive", "row_means_kernel": "row_means_naive",
         "row_dots_kernel": "row_dots_naive", "_row_sum": "row_sum_naive", "_row_dot": "row_dot_naive",
         "_row_centred_squares": "row_centred_squares_naive", "_bn_dx_row": "bn_backward_dx_naive"}
