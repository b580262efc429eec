"""im2col / col2im kernels (Numba) for dense k x k convolution, and their NumPy twins.

The kernels take the unpadded input and the (top, left) padding: im2col writes zeros where a tap
falls into the padding, col2im drops those taps, so neither a padded copy of x nor a cropped copy
of dx is made. `im2col_kernel` / `col2im_kernel` are the same kernels on an already padded array.

Layout: input x (C, N, H, W) (CNHW); columns (C*k*k, N*Ho*Wo) with rows ordered
(c, i, j), so an OIHW weight reshaped to (O, C*k*k) multiplies them in one GEMM. col2im is
the adjoint (scatter-add), the slow part of a NumPy backward because of its strided adds.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_SIGS = [
    "void(float32[:, :, :, ::1], int64, int64, int64, int64, int64, int64, float32[:, ::1])",
    "void(float64[:, :, :, ::1], int64, int64, int64, int64, int64, int64, float64[:, ::1])",
]


@njit(inline="always")
def _valid_cols(k_j, stride, left, W, Wo):
    """The output columns ow whose input column ow*stride + k_j - left lies in [0, W)."""
    lo = 0 if left - k_j <= 0 else (left - k_j + stride - 1) // stride
    hi = min(Wo, (W - 1 + left - k_j) // stride + 1) if W - 1 + left - k_j >= 0 else 0
    return lo, max(lo, hi)


@njit(_SIGS, cache=True, nogil=True)
def im2col_pad_kernel(x, k, stride, top, left, Ho, Wo, cols):
    """cols[(c*k + i)*k + j, (n*Ho + oh)*Wo + ow] = x[c, n, oh*stride + i - top, ow*stride + j - left],
    zero where that lies outside x (the zero padding, without a padded copy of x)."""
    C, N, H, W = x.shape
    for c in range(C):
        for i in range(k):
            for j in range(k):
                row = cols[(c * k + i) * k + j]
                lo, hi = _valid_cols(j, stride, left, W, Wo)
                for n in range(N):
                    for oh in range(Ho):
                        base = (n * Ho + oh) * Wo
                        h = oh * stride + i - top
                        if h < 0 or h >= H:
                            for ow in range(Wo):
                                row[base + ow] = 0.0
                            continue
                        for ow in range(lo):
                            row[base + ow] = 0.0
                        # views starting at the first valid column: non-negative indices, vectorisable loops
                        src = x[c, n, h, lo * stride + j - left:]
                        dst = row[base + lo:base + hi]
                        if stride == 1:
                            for q in range(hi - lo):
                                dst[q] = src[q]
                        else:
                            for q in range(hi - lo):
                                dst[q] = src[q * stride]
                        for ow in range(hi, Wo):
                            row[base + ow] = 0.0


@njit(_SIGS, cache=True, nogil=True)
def col2im_crop_kernel(dx, k, stride, top, left, Ho, Wo, dcols):
    """Adjoint of im2col_pad_kernel: dx (zeroed here) += scatter of dcols, the padding dropped."""
    C, N, H, W = dx.shape
    for c in range(C):
        for n in range(N):
            for h in range(H):
                for x in range(W):
                    dx[c, n, h, x] = 0.0
        for i in range(k):
            for j in range(k):
                row = dcols[(c * k + i) * k + j]
                lo, hi = _valid_cols(j, stride, left, W, Wo)
                for n in range(N):
                    for oh in range(Ho):
                        h = oh * stride + i - top
                        if h < 0 or h >= H:
                            continue
                        base = (n * Ho + oh) * Wo
                        dst = dx[c, n, h, lo * stride + j - left:]
                        src = row[base + lo:base + hi]
                        if stride == 1:
                            for q in range(hi - lo):
                                dst[q] += src[q]
                        else:
                            for q in range(hi - lo):
                                dst[q * stride] += src[q]


def im2col_kernel(xp, k, stride, Ho, Wo, cols):
    """cols[(c*k + i)*k + j, (n*Ho + oh)*Wo + ow] = xp[c, n, oh*stride + i, ow*stride + j] (xp already padded)."""
    im2col_pad_kernel(xp, k, stride, 0, 0, Ho, Wo, cols)


def col2im_kernel(dxp, k, stride, Ho, Wo, dcols):
    """Adjoint of im2col_kernel: dxp (zeroed here) += scatter of dcols."""
    col2im_crop_kernel(dxp, k, stride, 0, 0, Ho, Wo, dcols)


# ---- NumPy twins ----------------------------------------------------------------------------
def _window(xp, i, j, stride, ho, wo):
    return xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]


def im2col_naive(xp: np.ndarray, k: int, stride: int, ho: int, wo: int) -> np.ndarray:
    c, n = xp.shape[:2]
    cols = np.empty((c, k, k, n, ho, wo), dtype=xp.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, i, j] = _window(xp, i, j, stride, ho, wo)
    return cols.reshape(c * k * k, n * ho * wo)


def col2im_naive(dcols: np.ndarray, padded_shape, k: int, stride: int, ho: int, wo: int) -> np.ndarray:
    c, n = padded_shape[:2]
    d6 = dcols.reshape(c, k, k, n, ho, wo)
    dxp = np.zeros(padded_shape, dtype=dcols.dtype)
    for i in range(k):
        for j in range(k):
            _window(dxp, i, j, stride, ho, wo)[...] += d6[:, i, j]
    return dxp
