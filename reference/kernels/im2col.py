"""im2col / col2im kernels (Numba) for dense k x k convolution, and their NumPy twins.

Layout: padded input xp (C, N, Hp, Wp) (CNHW); columns (C*k*k, N*Ho*Wo) with rows ordered
(c, i, j), so an OIHW weight reshaped to (O, C*k*k) multiplies them in one GEMM. col2im is
the adjoint (scatter-add), the slow part of a NumPy backward because of its strided adds.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_SIGS = [
    "void(float32[:, :, :, ::1], int64, int64, int64, int64, float32[:, ::1])",
    "void(float64[:, :, :, ::1], int64, int64, int64, int64, float64[:, ::1])",
]


@njit(_SIGS, cache=True)
def im2col_kernel(xp, k, stride, Ho, Wo, cols):
    """cols[(c*k + i)*k + j, (n*Ho + oh)*Wo + ow] = xp[c, n, oh*stride + i, ow*stride + j]."""
    C, N = xp.shape[0], xp.shape[1]
    for c in range(C):
        for i in range(k):
            for j in range(k):
                row = cols[(c * k + i) * k + j]
                for n in range(N):
                    for oh in range(Ho):
                        src = xp[c, n, oh * stride + i]
                        base = (n * Ho + oh) * Wo
                        if stride == 1:  # contiguous: a separate loop LLVM can vectorise
                            for ow in range(Wo):
                                row[base + ow] = src[ow + j]
                        else:
                            for ow in range(Wo):
                                row[base + ow] = src[ow * stride + j]


@njit(_SIGS, cache=True)
def col2im_kernel(dxp, k, stride, Ho, Wo, dcols):
    """Adjoint of im2col_kernel: dxp (zeroed here) += scatter of dcols."""
    C, N = dxp.shape[0], dxp.shape[1]
    for c in range(C):
        for n in range(N):
            for h in range(dxp.shape[2]):
                for x in range(dxp.shape[3]):
                    dxp[c, n, h, x] = 0.0
        for i in range(k):
            for j in range(k):
                row = dcols[(c * k + i) * k + j]
                for n in range(N):
                    for oh in range(Ho):
                        dst = dxp[c, n, oh * stride + i]
                        base = (n * Ho + oh) * Wo
                        if stride == 1:
                            for ow in range(Wo):
                                dst[ow + j] += row[base + ow]
                        else:
                            for ow in range(Wo):
                                dst[ow * stride + j] += row[base + ow]


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
