"""im2col / col2im kernels (Numba) for dense k x k convolution, and their NumPy twins.

The kernels take the unpadded input and the (top, left) padding: im2col writes zeros where a tap
falls into the padding, col2im drops those taps, so neither a padded copy of x nor a cropped copy
of dx is made by the caller. `im2col_kernel` / `col2im_kernel` are the same kernels on an already
padded array.

Layout: input x (C, N, H, W) (CNHW); columns (C*k*k, N*Ho*Wo) with rows ordered
(c, i, j), so an OIHW weight reshaped to (O, C*k*k) multiplies them in one GEMM. col2im is
the adjoint (scatter-add), the slow part of a NumPy backward because of its strided adds.

The nano training run feeds these 4..16-wide output rows, so per-row overhead decides the speed:
no array views are made inside the loops (each view built a new array struct with a reference count
update), both sides are indexed as flat arrays with unsigned indices (a signed index costs a
negative-index wraparound test per access, which also kept LLVM from vectorising), and the
stride is a compile-time constant in im2col's stride-1 and stride-2 branches and col2im's stride-1 one.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_SIGS = [
    "void(float32[:, :, :, ::1], int64, int64, int64, int64, int64, int64, float32[:, ::1])",
    "void(float64[:, :, :, ::1], int64, int64, int64, int64, int64, int64, float64[:, ::1])",
]


@njit(inline="always")
def _valid_outputs(tap, stride, before, size, n_out):
    """The output positions o whose input position o*stride + tap - before lies in [0, size)."""
    lo = 0 if before - tap <= 0 else (before - tap + stride - 1) // stride
    hi = min(n_out, (size - 1 + before - tap) // stride + 1) if size - 1 + before - tap >= 0 else 0
    return lo, max(lo, hi)


@njit(inline="always")
def _u(i):
    # unsigned index: numba then skips the negative-index wraparound (every index here is >= 0)
    return np.uint64(i)


@njit(_SIGS, cache=True, nogil=True)
def im2col_pad_kernel(x, k, stride, top, left, Ho, Wo, cols):
    """cols[(c*k + i)*k + j, (n*Ho + oh)*Wo + ow] = x[c, n, oh*stride + i - top, ow*stride + j - left],
    zero where that lies outside x (the zero padding, without a padded copy of the whole x)."""
    C, N, H, W = x.shape
    if C == 0 or N == 0 or Ho <= 0 or Wo <= 0:
        return
    xf = x.reshape(C * N * H * W)
    cf = cols.reshape(cols.shape[0] * cols.shape[1])
    HW = H * W
    L = Ho * Wo
    # one (c, n) plane at a time goes into a zero-bordered scratch plane of the rows / columns the taps
    # read: its border is written once, and the k*k tap copies from it need no bounds logic at all
    Hp = (Ho - 1) * stride + k
    Wp = (Wo - 1) * stride + k
    P = np.zeros(Hp * Wp, x.dtype)
    h1 = min(H, Hp - top)
    w1 = min(W, Wp - left)
    for c in range(C):
        for n in range(N):
            s0 = (c * N + n) * HW
            for h in range(h1):
                pb = (h + top) * Wp + left
                sb = s0 + h * W
                for w in range(w1):
                    P[_u(pb + w)] = xf[_u(sb + w)]
            for i in range(k):
                for j in range(k):
                    d0 = (((c * k + i) * k + j) * N + n) * L
                    if stride == 1:
                        for oh in range(Ho):
                            d = d0 + oh * Wo
                            p = (oh + i) * Wp + j
                            for q in range(Wo):
                                cf[_u(d + q)] = P[_u(p + q)]
                    elif stride == 2:
                        for oh in range(Ho):
                            d = d0 + oh * Wo
                            p = (2 * oh + i) * Wp + j
                            for q in range(Wo):
                                cf[_u(d + q)] = P[_u(p + 2 * q)]
                    else:
                        for oh in range(Ho):
                            d = d0 + oh * Wo
                            p = (oh * stride + i) * Wp + j
                            for q in range(Wo):
                                cf[_u(d + q)] = P[_u(p + stride * q)]


@njit(_SIGS, cache=True, nogil=True)
def col2im_crop_kernel(dx, k, stride, top, left, Ho, Wo, dcols):
    """Adjoint of im2col_pad_kernel: dx (zeroed here) += scatter of dcols, the padding dropped.

    Every dx value receives its taps in (i, j) order, starting from 0.0, whatever the loop blocking,
    so the sums are those of the NumPy twin bit for bit. (A zero-bordered scratch plane per (c, n), as
    in im2col, measured slower here: it must be zeroed and cropped back for every plane; so did a
    constant-stride-2 branch, unlike im2col's.)"""
    C, N, H, W = dx.shape
    xf = dx.reshape(C * N * H * W)
    for q in range(C * N * H * W):
        xf[_u(q)] = 0.0
    if C == 0 or N == 0 or Ho <= 0 or Wo <= 0:
        return
    cf = dcols.reshape(dcols.shape[0] * dcols.shape[1])
    HW = H * W
    L = Ho * Wo
    for c in range(C):
        for i in range(k):
            oh0, oh1 = _valid_outputs(i, stride, top, H, Ho)
            for j in range(k):
                lo, hi = _valid_outputs(j, stride, left, W, Wo)
                r0 = ((c * k + i) * k + j) * N * L
                for n in range(N):
                    d0 = r0 + n * L
                    # dx index of output (oh, ow) is s0 + oh*stride*W + ow*stride (>= 0 on the valid range)
                    s0 = (c * N + n) * HW + (i - top) * W + (j - left)
                    for oh in range(oh0, oh1):
                        d = d0 + oh * Wo
                        s = s0 + oh * stride * W
                        if stride == 1:
                            for q in range(lo, hi):
                                xf[_u(s + q)] += cf[_u(d + q)]
                        else:
                            for q in range(lo, hi):
                                xf[_u(s + stride * q)] += cf[_u(d + q)]


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


# compiled entry point -> its NumPy twin (tests/reference/test_kernel_twins.py holds every module to its table)
TWINS = {"im2col_pad_kernel": "im2col_naive", "col2im_crop_kernel": "col2im_naive"}
