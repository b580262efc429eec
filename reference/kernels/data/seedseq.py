"""Philox keys of many rows in one Numba pass, bit for bit `SeedSequence([*prefix, row]).generate_state(2, np.uint64)`.

Why: every training step derives each row's Philox key for several purposes (keyed.philox_keys, 3-4
calls per step and process). The NumPy derivation there runs the same ~40 hash steps for all rows
at once, but each step is a pass over a 32-element array: ~184 us per call of 32 rows, all of it
per-operation overhead (~0.7 s of a 36 s default run). Here each row's hashing runs as scalar
integer code instead. keyed.py takes this path only in a process that has already loaded Numba
(the oracle's, through kernel_gate); elsewhere it keeps its NumPy derivation, the twin this kernel
is tested against (tests/reference/test_keyed.py), as is NumPy's SeedSequence itself.

The algorithm is keyed.py's (its module docstring: NumPy's SeedSequence with a pool of four words).
Every 32-bit word is held in a uint64 and masked after each product and difference, so nothing
depends on how Numba types a uint32 product; every operand is np.uint64 (a uint64 mixed with a
signed integer would be promoted to float64). The rows arrive as int64 and the range check is
done here: rows outside [0, 2**32) take more entropy words, and the caller's NumPy path has them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from effv2_train import seedseq_constants as sc  # the constants keyed.py's NumPy derivation uses

_MASK = np.uint64(sc.MASK)
_SHIFT = np.uint64(sc.SHIFT)
_S32 = np.uint64(32)
_ZERO = np.uint64(0)
_POOL = sc.POOL
_INIT_A, _MULT_A = np.uint64(sc.INIT_A), np.uint64(sc.MULT_A)
_INIT_B, _MULT_B = np.uint64(sc.INIT_B), np.uint64(sc.MULT_B)
_MIX_L, _MIX_R = np.uint64(sc.MIX_L), np.uint64(sc.MIX_R)
_ROW_MAX = sc.MASK


@njit(cache=True, nogil=True)
def _hash(value, h, mult):
    """(value hashed with constant h, the next constant): the constant runs on across calls."""
    v = value ^ h
    h = (h * mult) & _MASK
    v = (v * h) & _MASK
    return v ^ (v >> _SHIFT), h


@njit(cache=True, nogil=True)
def _mix(x, y):
    # the uint64 difference wraps modulo 2**64; the mask leaves it modulo 2**32, as the 32-bit one
    r = (((x * _MIX_L) & _MASK) - ((y * _MIX_R) & _MASK)) & _MASK
    return r ^ (r >> _SHIFT)


@njit(cache=True, nogil=True)
def _entropy(prefix, row, i):
    """Word i of the row's entropy: the prefix words, then the row, then zeros (the pool's padding)."""
    if i < prefix.shape[0]:
        return np.uint64(prefix[i])
    return row if i == prefix.shape[0] else _ZERO


@njit(cache=True, nogil=True)
def _fill_pool(prefix, row, pool):
    n = prefix.shape[0] + 1
    h = _INIT_A
    for i in range(_POOL):
        pool[i], h = _hash(_entropy(prefix, row, i), h, _MULT_A)
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                hashed, h = _hash(pool[src], h, _MULT_A)
                pool[dst] = _mix(pool[dst], hashed)
    for i in range(_POOL, n):
        for dst in range(_POOL):
            hashed, h = _hash(_entropy(prefix, row, i), h, _MULT_A)
            pool[dst] = _mix(pool[dst], hashed)


@njit("boolean(uint32[::1], int64[::1], uint64[:, ::1])", cache=True, nogil=True)
def seedseq_keys_into(prefix, rows, out):
    """out[r] = the Philox key of `SeedSequence([*prefix words, rows[r]])`; False (out partly written)
    as soon as a row is outside [0, 2**32)."""
    pool = np.empty(_POOL, np.uint64)
    for r in range(rows.shape[0]):
        if rows[r] < 0 or rows[r] > _ROW_MAX:
            return False
        _fill_pool(prefix, np.uint64(rows[r]), pool)
        g = _INIT_B
        s0, g = _hash(pool[0], g, _MULT_B)
        s1, g = _hash(pool[1], g, _MULT_B)
        s2, g = _hash(pool[2], g, _MULT_B)
        s3, g = _hash(pool[3], g, _MULT_B)
        # word pairs as little-endian uint64, as NumPy reads generate_state(2, np.uint64)
        out[r, 0] = s0 | (s1 << _S32)
        out[r, 1] = s2 | (s3 << _S32)
    return True


def seedseq_keys(prefix_words, rows) -> np.ndarray | None:
    """(len(rows), 2) uint64 keys of `SeedSequence([*prefix, row])` per row, `prefix_words` being the
    prefix's entropy words (uint32) and `rows` integers; None if a row is outside [0, 2**32).

    Integer arrays only: an unsigned row of 2**63 or more wraps to a negative int64, refused as such.
    """
    prefix_words = np.ascontiguousarray(prefix_words, dtype=np.uint32)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if rows.ndim != 1:
        raise ValueError(f"rows: expected a 1-D array, got shape {rows.shape}")
    out = np.empty((rows.shape[0], 2), np.uint64)
    return out if seedseq_keys_into(prefix_words, rows, out) else None


def seedseq_keys_naive(prefix_words, rows) -> np.ndarray | None:
    """`seedseq_keys` by NumPy's SeedSequence itself, one row at a time."""
    rows = [int(r) for r in rows]
    if any(r < 0 or r > sc.MASK for r in rows):
        return None
    words = [int(w) for w in prefix_words]
    return np.array([np.random.SeedSequence([*words, r]).generate_state(2, np.uint64) for r in rows],
                    np.uint64).reshape(len(rows), 2)


# compiled entry point -> its NumPy twin (tests/reference/test_kernel_twins.py holds every module to its table)
TWINS = {"seedseq_keys_into": "seedseq_keys_naive"}
