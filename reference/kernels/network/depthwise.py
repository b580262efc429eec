"""Depthwise convolution kernels (Numba) and their slow, obvious NumPy twins.

Layout: channels last, (N, Hp, Wp, C), already padded; weight (k, k, C); output
(N, Ho, Wo, C). The rest of the oracle is CNHW, but a depthwise conv has no reduction over
channels, so with channels innermost every loop body is a contiguous, dependency-free
sweep over C that LLVM vectorises; in CNHW the inner loops are the (tiny, late-stage)
output rows and ran ~8x slower even counting the two transposes. Weight gradients
accumulate per channel (elementwise over C), so no reduction is reassociated and no
fastmath is needed. Each kernel writes into caller-provided outputs.

Only C-contiguous float32 and float64 arrays are accepted (explicit signatures); anything
else raises numba's TypeError instead of silently compiling a new specialisation.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FWD_SIGS = [
    "void(float32[:, :, :, ::1], float32[:, :, ::1], int64, float32[:, :, :, ::1], uint64, uint64)",
    "void(float64[:, :, :, ::1], float64[:, :, ::1], int64, float64[:, :, :, ::1], uint64, uint64)",
]
_BWD_SIGS = [
    "void(float32[:, :, :, ::1], float32[:, :, ::1], float32[:, :, :, ::1], int64,"
    " float32[:, :, :, ::1], float32[:, :, ::1], uint64, uint64)",
    "void(float64[:, :, :, ::1], float64[:, :, ::1], float64[:, :, :, ::1], int64,"
    " float64[:, :, :, ::1], float64[:, :, ::1], uint64, uint64)",
]


@njit(_FWD_SIGS, cache=True, nogil=True)
def depthwise_forward_samples(xp, w, stride, y, n0, n1):
    """y[n, oh, ow, c] = sum_ij w[i, j, c] * xp[n, oh*stride + i, ow*stride + j, c] for samples n0 <= n < n1.

    Threads split the samples, not the channels: split by channels, each thread ran the whole loop nest
    over half-length channel rows, and two threads were no faster than one (bench/README.md)."""
    _, Ho, Wo, C = y.shape
    k = w.shape[0]
    for n in range(n0, n1):
        for oh in range(Ho):
            for ow in range(Wo):
                out = y[n, oh, ow]
                for c in range(C):
                    out[c] = 0.0
                for i in range(k):
                    for j in range(k):
                        src = xp[n, oh * stride + i, ow * stride + j]
                        wk = w[i, j]
                        for c in range(C):
                            out[c] += wk[c] * src[c]


@njit(_BWD_SIGS, cache=True, nogil=True)
def depthwise_backward_samples(xp, w, dy, stride, dxp, dw, n0, n1):
    """One pass over dy for samples n0 <= n < n1: their dxp rows (zeroed here) get the transposed conv, dw
    (zeroed here) those samples' share of the correlation. The caller sums the shares of fixed sample
    blocks in block order, so the result does not depend on which thread took which block."""
    _, Ho, Wo, C = dy.shape
    k = w.shape[0]
    for n in range(n0, n1):
        for h in range(dxp.shape[1]):
            for x in range(dxp.shape[2]):
                row = dxp[n, h, x]
                for c in range(C):
                    row[c] = 0.0
    for i in range(k):
        for j in range(k):
            for c in range(C):
                dw[i, j, c] = 0.0
    for n in range(n0, n1):
        for oh in range(Ho):
            for ow in range(Wo):
                g = dy[n, oh, ow]
                for i in range(k):
                    for j in range(k):
                        src = xp[n, oh * stride + i, ow * stride + j]
                        dst = dxp[n, oh * stride + i, ow * stride + j]
                        wk = w[i, j]
                        dwk = dw[i, j]
                        for c in range(C):
                            dst[c] += wk[c] * g[c]
                            dwk[c] += g[c] * src[c]


def depthwise_forward_kernel(xp, w, stride, y):
    """Every sample (see depthwise_forward_samples)."""
    depthwise_forward_samples(xp, w, stride, y, 0, y.shape[0])


def depthwise_backward_kernel(xp, w, dy, stride, dxp, dw):
    """Every sample in one block (see depthwise_backward_samples)."""
    depthwise_backward_samples(xp, w, dy, stride, dxp, dw, 0, dy.shape[0])


# ---- NumPy twins (float64 reference for the kernels; slow and obvious on purpose) ----------
def _taps(xp: np.ndarray, i: int, j: int, stride: int, ho: int, wo: int) -> np.ndarray:
    return xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]


def depthwise_forward_naive(xp: np.ndarray, w: np.ndarray, stride: int, out_hw: tuple[int, int]) -> np.ndarray:
    """Same contract as `depthwise_forward_kernel`, by einsum over each kernel tap."""
    ho, wo = out_hw
    k = w.shape[0]
    y = np.zeros((xp.shape[0], ho, wo, xp.shape[3]), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            y += np.einsum("c,nhwc->nhwc", w[i, j], _taps(xp, i, j, stride, ho, wo))
    return y


def depthwise_backward_naive(xp: np.ndarray, w: np.ndarray, dy: np.ndarray, stride: int):
    """(dxp, dw) for the forward above, tap by tap."""
    ho, wo = dy.shape[1:3]
    k = w.shape[0]
    dxp = np.zeros(xp.shape, dtype=np.float64)
    dw = np.zeros(w.shape, dtype=np.float64)
    for i in range(k):
        for j in range(k):
            dw[i, j] = np.einsum("nhwc,nhwc->c", dy, _taps(xp, i, j, stride, ho, wo))
            _taps(dxp, i, j, stride, ho, wo)[...] += np.einsum("c,nhwc->nhwc", w[i, j], dy)
    return dxp, dw


# compiled entry point -> its NumPy twin (tests/reference/test_kernel_twins.py holds every module to its table)
TWINS = {"depthwise_forward_samples": "depthwise_forward_naive",
         "depthwise_backward_samples": "depthwise_backward_naive"}
