"""SiLU forward with its own vectorised exp (Numba), and the NumPy twin it is tested against.

NumPy's exp is a separate pass (and on this class of machine, without AVX-512, a slow one:
~3 ns per float32), followed by the fused sigmoid pass; here exp(-x), the sigmoid and
x * sigmoid(x) are one blocked pass that LLVM vectorises. exp(t) = 2**n * exp(r) with
n = round(t / ln 2) and |r| <= ln(2)/2 (Cody-Waite reduction, ln 2 split in two parts per dtype),
exp(r) by a degree-12 Taylor polynomial (truncation error < 2e-16 relative, so float64 is
as exact as libm to within a few ulp), and 2**n put together from its bits: n is read from
the low mantissa bits of t / ln 2 + 1.5 * 2**mantissa_bits (the "magic number" rounding,
no float-to-int conversion, which AVX2 cannot vectorise for int64), then shifted into an
exponent field. Each block of `B` values goes through three short loops over a scratch
buffer and its integer view (supplied by the caller, so no bit casts are needed inside).
t is clamped to the normal range, so exp(-x) never overflows: for x < -87 (float32) /
-708 (float64) the sigmoid is ~1e-38 / ~1e-308 instead of 0, and silu(x) ~0 (not -0.0).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_B = 256  # values per block (the scratch buffers stay in L1)

# (clamp, magic, magic's bits, exponent bias, mantissa bits) per dtype; ln 2 split as in fdlibm
_PARAMS = {
    np.dtype(np.float32): (87.0, 1.5 * 2.0 ** 23, int(np.array(1.5 * 2.0 ** 23, np.float32).view(np.int32)), 127, 23),
    np.dtype(np.float64): (708.0, 1.5 * 2.0 ** 52, int(np.array(1.5 * 2.0 ** 52, np.float64).view(np.int64)), 1023, 52),
}
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LOG2E = 1.44269504088896338700e+00


_LN2_SPLIT32 = (0.693359375, -2.12194440e-4)  # Cephes expf: the high part has few bits, so n * hi is exact


def _make_consts(dtype) -> np.ndarray:
    clamp, magic = _PARAMS[np.dtype(dtype)][:2]
    hi, lo = _LN2_SPLIT32 if np.dtype(dtype) == np.float32 else (_LN2_HI, _LN2_LO)
    c = np.array([clamp, magic, _LOG2E, hi, lo] + [1.0 / math.factorial(k) for k in range(13)], dtype=dtype)
    return c


_CONSTS = {dt: _make_consts(dt) for dt in _PARAMS}


@njit(["void(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1], int32[::1], int64, int64, int64)",
       "void(float64[::1], float64[::1], float64[::1], float64[::1], float64[::1], int64[::1], int64, int64, int64)"],
      cache=True, nogil=True, error_model="numpy")
def silu_exp_forward_kernel(x, s, y, c, zf, zi, magic_bits, bias, shift):
    """s = sigmoid(x), y = x * s (flat arrays). c = _CONSTS[dtype] (every constant in the array's dtype,
    so float32 stays float32); zf / zi: a scratch block and its integer view."""
    clamp, magic, log2e, ln2hi, ln2lo = c[0], c[1], c[2], c[3], c[4]
    one, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12 = c[5], c[7], c[8], c[9], c[10], c[11], c[12], c[13], \
        c[14], c[15], c[16], c[17]
    n_total = x.shape[0]
    bsz = zf.shape[0]
    for start in range(0, n_total, bsz):
        stop = min(start + bsz, n_total)
        xb, sb, yb = x[start:stop], s[start:stop], y[start:stop]
        for i in range(stop - start):
            t = min(max(-xb[i], -clamp), clamp)
            z = t * log2e + magic
            nf = z - magic
            r = (t - nf * ln2hi) - nf * ln2lo
            p = p12
            p = p * r + p11
            p = p * r + p10
            p = p * r + p9
            p = p * r + p8
            p = p * r + p7
            p = p * r + p6
            p = p * r + p5
            p = p * r + p4
            p = p * r + p3
            p = p * r + p2
            p = p * r + one
            p = p * r + one
            sb[i] = p  # exp(r) for now
            zf[i] = z
        for i in range(stop - start):
            zi[i] = (zi[i] - magic_bits + bias) << shift  # the bits of 2**n
        for i in range(stop - start):
            sv = one / (one + sb[i] * zf[i])  # 1 / (1 + exp(-x))
            sb[i] = sv
            yb[i] = xb[i] * sv


def silu_scratch(dt):
    """(c, zf, zi, magic_bits, bias, shift): what the kernel needs besides the data, for dtype dt
    (a fresh scratch block per call: pieces running on other threads each get their own)."""
    _, _, magic_bits, bias, shift = _PARAMS[dt]
    zf = np.empty(_B, dt)
    return _CONSTS[dt], zf, zf.view(np.int32 if dt == np.float32 else np.int64), magic_bits, bias, shift


def silu_exp_forward(x: np.ndarray, s: np.ndarray, y: np.ndarray) -> None:
    """Flat C-contiguous x, s, y of one float dtype: s = sigmoid(x), y = x * sigmoid(x)."""
    silu_exp_forward_kernel(x, s, y, *silu_scratch(x.dtype))


def silu_exp_forward_naive(x: np.ndarray):
    """(sigmoid(x), x * sigmoid(x)) by NumPy's exp (same clamp as the kernel)."""
    clamp = _PARAMS[np.dtype(x.dtype)][0]
    s = 1.0 / (1.0 + np.exp(np.clip(-x, -clamp, clamp)))
    return s, x * s
