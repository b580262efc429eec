"""The first uniform doubles of many keyed Philox streams in one Numba pass, bit for bit NumPy's.

Why: `plan.masks` draws each row's dropout and drop-path uniforms from its own keyed stream,
`Generator(Philox(key_r, counter=0)).random(n)`. Building a Generator per row (about 64 rows per
purpose per step) costs ~1 ms per training step, ~1.4 s of a 40 s run per process, for a few
hundred numbers. The keys are already derived in one pass (keyed.philox_keys); here the streams
themselves are computed for all rows at once, with no Python object per row (plan.masks of 32 rows
at the default run's third stage: median 795 us -> 329 us, most of what is left being the keys).
plan.py takes this path only in a process that has already loaded Numba (the oracle's): the
framework trainers never import Numba, and draw the same numbers from the generators.

The stream is NumPy's Philox (numpy/random/src/philox/philox.h, a stable part of NumPy's
stream-compatibility promise): Philox4x64 with 10 rounds.
  * a round: (hi0, lo0) = M0 * x0 and (hi1, lo1) = M1 * x2 as 128-bit products;
    x = (hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0); the key is bumped by the Weyl constants W0, W1
    before every round but the first;
  * the generator keeps a 4-word buffer, initially empty (buffer_pos = 4): a draw from an empty
    buffer first increments the 256-bit counter (carrying word 0 into 1, 2, 3), then fills the
    buffer with the 10-round block of the counter. A generator built with counter 0 therefore
    starts with the block of counter 1;
  * `Generator.random(n)` (float64) takes one 64-bit word per double, in order:
    (word >> 11) * 2**-53.
Numba has no 128-bit integer type; the high half of each product comes from a small LLVM intrinsic
(zero-extend to i128, multiply, shift: one `mul` on x86-64). The portable emulation from 32-bit halves
(philox.h's _umul128) was 2.7x slower here (32 rows x 256 doubles: 118 us against 43 us); it is
what the NumPy twin `philox_uniforms_naive` (vectorised over rows) uses, kept equal by the tests.
Every operand is np.uint64 (a uint64 mixed with a signed integer would be promoted to float64).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_M0 = np.uint64(0xD2E7470EE14C6C93)
_M1 = np.uint64(0xCA5A826395121157)
_W0 = np.uint64(0x9E3779B97F4A7C15)
_W1 = np.uint64(0xBB67AE8584CAA73B)
_ROUNDS = 10
_LO32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S11 = np.uint64(11)
_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_SCALE = 1.0 / 9007199254740992.0  # 2**-53


@intrinsic
def _mulhi(typingctx, a, b):
    """High 64 bits of the 128-bit product a * b of two uint64 (LLVM's i128 multiply: one `mul` on x86-64)."""
    if a != types.uint64 or b != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        i128 = ir.IntType(128)
        product = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        return builder.trunc(builder.lshr(product, ir.Constant(i128, 64)), ir.IntType(64))

    return types.uint64(types.uint64, types.uint64), codegen


@njit("void(uint64[:, ::1], uint64[::1], float64[:, ::1])", cache=True, nogil=True)
def philox_uniforms_into(keys, counter, out):
    """out[r, :] = Generator(Philox(key=keys[r], counter=counter)).random(out.shape[1]) for every row r."""
    rows, n = out.shape
    for r in range(rows):
        c0, c1, c2, c3 = counter[0], counter[1], counter[2], counter[3]
        k0, k1 = keys[r, 0], keys[r, 1]
        j = 0
        while j < n:
            c0 += _ONE
            if c0 == _ZERO:
                c1 += _ONE
                if c1 == _ZERO:
                    c2 += _ONE
                    if c2 == _ZERO:
                        c3 += _ONE
            x0, x1, x2, x3 = c0, c1, c2, c3
            a, b = k0, k1
            for i in range(_ROUNDS):
                if i:
                    a += _W0
                    b += _W1
                hi0, lo0 = _mulhi(_M0, x0), _M0 * x0
                hi1, lo1 = _mulhi(_M1, x2), _M1 * x2
                x0, x1, x2, x3 = hi1 ^ x1 ^ a, lo1, hi0 ^ x3 ^ b, lo0
            out[r, j] = np.float64(x0 >> _S11) * _SCALE
            if j + 1 < n:
                out[r, j + 1] = np.float64(x1 >> _S11) * _SCALE
            if j + 2 < n:
                out[r, j + 2] = np.float64(x2 >> _S11) * _SCALE
            if j + 3 < n:
                out[r, j + 3] = np.float64(x3 >> _S11) * _SCALE
            j += 4


def _prepare(keys, n: int, counter) -> tuple[np.ndarray, np.ndarray]:
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    if keys.ndim != 2 or keys.shape[1] != 2:
        raise ValueError(f"keys: expected shape (rows, 2), got {keys.shape}")
    if n < 0:
        raise ValueError(f"n: expected a non-negative count, got {n}")
    if counter is None:
        return keys, np.zeros(4, np.uint64)  # a fresh one: the kernel's signature takes writable arrays
    counter = np.ascontiguousarray(counter, dtype=np.uint64)
    if counter.shape != (4,):
        raise ValueError(f"counter: expected shape (4,), got {counter.shape}")
    return keys, counter


def philox_uniforms(keys, n: int, counter=None) -> np.ndarray:
    """(rows, n) float64: row r is `Generator(Philox(key=keys[r], counter=counter)).random(n)` (counter 0 if None)."""
    keys, counter = _prepare(keys, n, counter)
    out = np.empty((keys.shape[0], n), np.float64)
    philox_uniforms_into(keys, counter, out)
    return out


def philox_uniforms_naive(keys, n: int, counter=None) -> np.ndarray:
    """NumPy twin of `philox_uniforms`: the same blocks, vectorised over the rows (uint64 arrays wrap by themselves)."""
    keys, counter = _prepare(keys, n, counter)
    rows = keys.shape[0]
    blocks = -(-n // 4)
    words = np.empty((rows, blocks * 4), np.uint64)
    ctr = [int(c) for c in counter]
    mask = (1 << 64) - 1
    with np.errstate(over="ignore"):
        for blk in range(blocks):
            for w in range(4):  # the 256-bit counter, incremented before each block
                ctr[w] = (ctr[w] + 1) & mask
                if ctr[w]:
                    break
            x = [np.full(rows, c, np.uint64) for c in ctr]
            a, b = keys[:, 0].copy(), keys[:, 1].copy()
            for i in range(_ROUNDS):
                if i:
                    a += _W0
                    b += _W1
                hi0, lo0 = _mulhi_naive(_M0, x[0]), _M0 * x[0]
                hi1, lo1 = _mulhi_naive(_M1, x[2]), _M1 * x[2]
                x = [hi1 ^ x[1] ^ a, lo1, hi0 ^ x[3] ^ b, lo0]
            words[:, 4 * blk:4 * blk + 4] = np.stack(x, axis=1)
    return (words[:, :n] >> _S11).astype(np.float64) * _SCALE


def _mulhi_naive(a: np.uint64, b: np.ndarray) -> np.ndarray:
    """High 64 bits of a * b from 32-bit halves (philox.h's _umul128), on uint64 arrays."""
    a_lo, a_hi = a & _LO32, a >> _S32
    b_lo, b_hi = b & _LO32, b >> _S32
    hl, lh, ll = a_hi * b_lo, a_lo * b_hi, a_lo * b_lo
    carry = ((hl & _LO32) + (lh & _LO32) + (ll >> _S32)) >> _S32
    return a_hi * b_hi + (hl >> _S32) + (lh >> _S32) + carry


# compiled entry point -> its NumPy twin (tests/reference/test_kernel_twins.py holds every module to its table)
TWINS = {"philox_uniforms_into": "philox_uniforms_naive"}
