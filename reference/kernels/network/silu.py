"""SiLU forward with its own vectorised exp (Numba), and the NumPy twin it is tested against.

NumPy's exp is a separate pass (and on this class of machine, without AVX-512, a slow one:
~3 ns per float32), followed by the fused sigmoid pass; here exp(-x), the sigmoid and
x * sigmoid(x) are one loop that LLVM vectorises. exp(t) = 2**n * exp(r) with
n = round(t / ln 2) and |r| <= ln(2)/2 (Cody-Waite reduction, ln 2 split in two parts per dtype),
exp(r) by a Taylor polynomial of the dtype's degree (float32: 7, truncation error < 6e-9 relative,
a twentieth of float32's half ulp; float64: 12, < 2e-16, so float64 is as exact as libm to within
a few ulp), and 2**n put together from its bits: n is read from the low mantissa bits of
t / ln 2 + 1.5 * 2**mantissa_bits (the "magic number" rounding, no float-to-int conversion, which
AVX2 cannot vectorise for int64), then shifted into an exponent field. The bits move between the
float and the integer by two bit casts (`_float_bits`, `_bits_float`: LLVM `bitcast`, free in a
vector register); before them, each block of values went through three loops over a scratch buffer
and its integer view (2.2x slower with the degree-12 polynomial for float32 too).

The kernel lets LLVM contract a multiply and an add into one FMA (`fastmath={"contract"}`, nothing
else of fast-math): the Horner steps are then one rounding each. t is clamped to the normal range,
so exp(-x) never overflows: for x < -87 (float32) / -708 (float64) the sigmoid is ~1e-38 / ~1e-308
instead of 0, and silu(x) ~0 (not -0.0).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# (clamp, magic, magic's bits, exponent bias, mantissa bits) per dtype; ln 2 split as in fdlibm
_PARAMS = {
    np.dtype(np.float32): (87.0, 1.5 * 2.0 ** 23, int(np.array(1.5 * 2.0 ** 23, np.float32).view(np.int32)), 127, 23),
    np.dtype(np.float64): (708.0, 1.5 * 2.0 ** 52, int(np.array(1.5 * 2.0 ** 52, np.float64).view(np.int64)), 1023, 52),
}
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LOG2E = 1.44269504088896338700e+00


_LN2_SPLIT32 = (0.693359375, -2.12194440e-4)  # Cephes expf: the high part has few bits, so n * hi is exact
_DEGREE = 12  # the coefficients kept (float32's polynomial uses the first 8 of them)


def _make_consts(dtype) -> np.ndarray:
    clamp, magic = _PARAMS[np.dtype(dtype)][:2]
    hi, lo = _LN2_SPLIT32 if np.dtype(dtype) == np.float32 else (_LN2_HI, _LN2_LO)
    return np.array([clamp, magic, _LOG2E, hi, lo] + [1.0 / math.factorial(k) for k in range(_DEGREE + 1)],
                    dtype=dtype)


_CONSTS = {dt: _make_consts(dt) for dt in _PARAMS}


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float32 / float64 as an int32 / int64 (LLVM bitcast)."""
    width = {types.float32: 32, types.float64: 64}.get(x)
    if width is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(width))
    return getattr(types, f"int{width}")(x), codegen


@intrinsic
def _bits_float(typingctx, i):
    """The float32 / float64 whose bits an int32 / int64 holds (LLVM bitcast)."""
    float_type = {types.int32: (types.float32, ir.FloatType()), types.int64: (types.float64, ir.DoubleType())}.get(i)
    if float_type is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], float_type[1])
    return float_type[0](i), codegen


def _sigmoid(x, k):
    """1 / (1 + exp(-x)) in x's dtype; k = `_constants(c)` (typed per dtype by the overload below)."""
    raise NotImplementedError("compiled only: a helper of the Numba kernels")


@overload(_sigmoid, inline="always")
def _sigmoid_typed(x, k):
    if x == types.float32:
        int_t, poly = np.int32, _poly7
    elif x == types.float64:
        int_t, poly = np.int64, _poly12
    else:
        return None
    _, _, magic_bits, bias, shift = _PARAMS[np.dtype(str(x))]
    offset = magic_bits - bias  # z's bits - magic's bits = n; 2**n's exponent field holds n + bias

    def impl(x, k):
        clamp, magic, log2e, ln2hi, ln2lo, one = k[0], k[1], k[2], k[3], k[4], k[5]
        t = min(max(-x, -clamp), clamp)
        z = t * log2e + magic
        nf = z - magic
        r = (t - nf * ln2hi) - nf * ln2lo
        two_n = _bits_float(int_t((_float_bits(z) - offset) << shift))
        return one / (one + poly(r, k) * two_n)
    return impl


@njit(inline="always")
def _horner_from_6(p, r, k):
    """Horner's steps down from the coefficient of r**6 (k[5 + j] = 1 / j!), p holding the higher ones."""
    p = p * r + k[11]
    p = p * r + k[10]
    p = p * r + k[9]
    p = p * r + k[8]
    p = p * r + k[7]
    p = p * r + k[6]
    return p * r + k[5]


@njit(inline="always")
def _poly7(r, k):
    """exp(r) ~ sum of r**j / j! for j <= 7."""
    return _horner_from_6(k[12], r, k)


@njit(inline="always")
def _poly12(r, k):
    """exp(r) ~ sum of r**j / j! for j <= 12."""
    p = k[17] * r + k[16]
    p = p * r + k[15]
    p = p * r + k[14]
    p = p * r + k[13]
    return _horner_from_6(p * r + k[12], r, k)


@njit(inline="always")
def _constants(c):
    """The constants as scalars read once (an array read in the loop could alias the outputs)."""
    return (c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15],
            c[16], c[17])


@njit(["void(float32[::1], float32[::1], float32[::1], float32[::1])",
       "void(float64[::1], float64[::1], float64[::1], float64[::1])"],
      cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def silu_exp_forward_kernel(x, s, y, c):
    """s = sigmoid(x), y = x * s (flat arrays); c = `silu_constants(dtype)` (every constant in the
    array's dtype, so float32 stays float32; read only by convention: a read-only array has another Numba type)."""
    k = _constants(c)
    for i in range(x.shape[0]):
        xi = x[i]
        sv = _sigmoid(xi, k)
        s[i] = sv
        y[i] = xi * sv


def silu_constants(dt) -> np.ndarray:
    """The constants the kernel needs, for dtype dt (shared: do not write to it)."""
    return _CONSTS[np.dtype(dt)]


def silu_exp_forward(x: np.ndarray, s: np.ndarray, y: np.ndarray) -> None:
    """Flat C-contiguous x, s, y of one float dtype: s = sigmoid(x), y = x * sigmoid(x)."""
    silu_exp_forward_kernel(x, s, y, silu_constants(x.dtype))


def silu_exp_forward_naive(x: np.ndarray):
    """(sigmoid(x), x * sigmoid(x)) by NumPy's exp (same clamp as the kernel)."""
    clamp = _PARAMS[np.dtype(x.dtype)][0]
    s = 1.0 / (1.0 + np.exp(np.clip(-x, -clamp, clamp)))
    return s, x * s


# compiled entry point -> its NumPy twin (tests/reference/test_kernel_twins.py holds every module to its table)
TWINS = {"silu_exp_forward_kernel": "silu_exp_forward_naive"}
