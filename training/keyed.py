"""Keyed Philox generators for many rows at once, bit for bit those of `SeedSequence([seed, purpose, step, row])`.

Building `Generator(Philox(SeedSequence([...])))` costs about 40 us, almost all of it in SeedSequence's
scalar hashing, and a training step builds hundreds (one per row and purpose). The hashing is the
same fixed sequence of 32-bit operations for every row of a step, so here it runs once over a
uint32 array holding all the rows, and each generator receives its precomputed Philox key through a
minimal `ISeedSequence` (passing `Philox(key=...)` instead would make NumPy draw OS entropy for a
SeedSequence it then discards).

The derivation follows NumPy's SeedSequence (numpy/random/bit_generator.pyx, pool size 4), a
stable part of NumPy's stream-compatibility promise:
  * entropy: each integer as little-endian 32-bit words (0 as one word), the integers' words
    concatenated in order;
  * hashmix(v): v ^= h; h *= MULT_A; v *= h; v ^= v >> 16, with h starting at INIT_A and running on
    across every call; mix(x, y) = (MIX_L * x - MIX_R * y), then ^= its own >> 16;
  * the pool: the first four words hashmixed (zeros hashmixed when there are fewer); then every
    pool word mixed into every other one (source-major order); then each further word hashmixed
    and mixed into all four pool words;
  * the state: four words, pool[i] ^ g, g *= MULT_B, * g, ^= >> 16, with g starting at INIT_B;
    pairs of words read as little-endian uint64: the two words of Philox's key.
Arithmetic is modulo 2**32 on uint32 arrays (NumPy wraps array arithmetic silently). Anything the
fast path does not take (a negative value, a non-integer) goes through SeedSequence itself, so it
is accepted or refused exactly as NumPy does.

Even vectorised, the derivation is ~40 passes over arrays of a few dozen rows: ~184 us per call of
32 rows, nearly all per-operation overhead. In a process that has already loaded Numba (the
oracle's), the common case (every row one word) goes to kernels/data/seedseq.py instead, the same keys
from scalar code; the NumPy derivation here stays as its tested twin and for every other process.

NumPy only: the trainers of every backend import it, and it never loads Numba itself (kernel_gate).
"""

from __future__ import annotations

import operator
from functools import lru_cache

import numpy as np
from numpy.random.bit_generator import ISeedSequence

from .kernel_gate import kernel_if_numba_loaded

from .seedseq_constants import INIT_A as _INIT_A, INIT_B as _INIT_B, MASK as _MASK, MIX_L as _MIX_L, MIX_R as _MIX_R
from .seedseq_constants import MULT_A as _MULT_A, MULT_B as _MULT_B, POOL as _POOL, SHIFT as _SHIFT


class _Key(ISeedSequence):
    """The seed sequence Philox asks for its key: answers with a key derived in advance."""

    __slots__ = ("_key",)

    def __init__(self, key: np.ndarray):
        self._key = key

    def generate_state(self, n_words, dtype=np.uint32):
        # Philox asks for exactly this; anything else would need the pool, which is not kept
        if n_words != 2 or np.dtype(dtype) != np.uint64:
            raise ValueError("a precomputed Philox key only answers generate_state(2, np.uint64)")
        return self._key.copy()

    def __repr__(self) -> str:
        return f"_Key({self._key.tolist()})"


def _words(n: int) -> list[int]:
    """A non-negative int as little-endian 32-bit words; zero is one word."""
    out = [n & _MASK]
    n >>= 32
    while n:
        out.append(n & _MASK)
        n >>= 32
    return out


@lru_cache(maxsize=16)
def _chain(init: int, mult: int, count: int) -> tuple[tuple[int, int], ...]:
    """(xor, multiplier) of `count` successive hash steps whose constant starts at `init`, times `mult` each step.

    The constants depend only on how many steps came before, never on the data, so they are shared by all rows.
    """
    out, h = [], init
    for _ in range(count):
        nxt = (h * mult) & _MASK
        out.append((h, nxt))
        h = nxt
    return tuple(out)


# A word is a Python int when it is the same for every row (seed, purpose, step), else a uint32 array
# over the rows: the shared part of the hashing then costs a few int operations, not array passes.
# Arrays wrap modulo 2**32 by themselves; ints are masked after each product and difference.
def _wrap(v):
    return v & _MASK if isinstance(v, int) else v


def _hash(v, consts):
    xor, mul = consts
    v = _wrap((v ^ xor) * mul)
    return v ^ (v >> _SHIFT)


def _mix(x, y):
    r = _wrap(_wrap(x * _MIX_L) - _wrap(y * _MIX_R))
    return r ^ (r >> _SHIFT)


def _pool(entropy: list) -> list:
    """The four pool words after mixing in `entropy` (words: ints or equally long uint32 arrays)."""
    n = len(entropy)
    extra = max(0, n - _POOL)
    consts = iter(_chain(_INIT_A, _MULT_A, _POOL + _POOL * (_POOL - 1) + extra * _POOL))
    pool = [_hash(entropy[i] if i < n else 0, next(consts)) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], _hash(pool[src], next(consts)))
    for word in entropy[_POOL:]:
        for dst in range(_POOL):
            pool[dst] = _mix(pool[dst], _hash(word, next(consts)))
    return pool


def _philox_keys(entropy: list, rows: int) -> np.ndarray:
    """(rows, 2) uint64 Philox keys: SeedSequence's generate_state(2, np.uint64) of each row's entropy."""
    pool = _pool(entropy)
    state = [_hash(pool[i % _POOL], c) for i, c in enumerate(_chain(_INIT_B, _MULT_B, 4))]
    words = np.stack([s if isinstance(s, np.ndarray) else np.full(rows, s, np.uint32) for s in state], axis=1)
    # word pairs read as little-endian uint64 whatever the host's byte order, as NumPy reads them
    return words.astype("<u4", copy=False).view("<u8").astype(np.uint64, copy=False)


def _plain_int(v) -> int | None:
    """v as a non-negative Python int when the fast path may take it; None sends it to SeedSequence."""
    if isinstance(v, (str, bytes, bool, np.bool_)):
        return None
    try:
        i = operator.index(v)
    except TypeError:
        return None
    return i if i >= 0 else None


def _prefix_words(prefix) -> list[int] | None:
    """The prefix's entropy words, its integers' words in order; None if a value needs SeedSequence."""
    words = []
    for v in prefix:
        if type(v) is int and 0 <= v <= _MASK:  # seed, purpose, step: skips the general checks (~2 us a call)
            words.append(v)
            continue
        i = _plain_int(v)
        if i is None:
            return None
        words += _words(i)
    return words


def _int_rows(rows) -> np.ndarray | None:
    """rows as a 1-D integer array, else None (the per-row path then looks at each value)."""
    try:
        arr = np.asarray(rows)
    except (TypeError, ValueError, OverflowError):
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        return None
    return arr


def _small_rows(arr: np.ndarray) -> np.ndarray | None:
    """An integer array as uint32 when every row is in [0, 2**32) (one entropy word each), else None."""
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > _MASK):
        return None
    return arr.astype(np.uint32)


def _seedseq_kernel():
    """kernels.data.seedseq.seedseq_keys once Numba is loaded in this process, else None (keyed.py never loads it)."""
    return kernel_if_numba_loaded("kernels.data.seedseq", "seedseq_keys")


def _one_word_keys(lead: list[int], ints: np.ndarray) -> np.ndarray | None:
    """Keys of integer rows that are each one entropy word; None if any row takes more."""
    kernel = _seedseq_kernel()
    if kernel is not None:  # it checks the rows' range itself: the min / max passes cost more than its hashing
        return kernel(np.array(lead, np.uint32), ints)
    small = _small_rows(ints)
    return None if small is None else _philox_keys(lead + [small], len(small))


def philox_keys(prefix, rows) -> np.ndarray | None:
    """(len(rows), 2) uint64 keys of `SeedSequence([*prefix, row])` per row; None if any value needs SeedSequence."""
    lead = _prefix_words(prefix)
    if lead is None:
        return None
    ints = _int_rows(rows)
    keys = None if ints is None else _one_word_keys(lead, ints)
    if keys is not None:
        return keys
    tail = [_plain_int(r) for r in rows]
    if None in tail:
        return None
    keys = np.empty((len(tail), 2), np.uint64)
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(tail):  # rows of 2**32 and more take more words: one batch per word count
        by_len.setdefault(len(_words(r)), []).append(i)
    for count, idx in by_len.items():
        vals = [tail[i] for i in idx]
        cols = [np.array([(v >> (32 * k)) & _MASK for v in vals], np.uint32) for k in range(count)]
        keys[idx] = _philox_keys(lead + cols, len(idx))
    return keys


# Philox copies the counter it is given; an array is taken as is, while the default int 0 goes
# through a slower Python conversion on every construction
_COUNTER_ZERO = np.zeros(4, np.uint64)
_COUNTER_ZERO.setflags(write=False)


def generator_from_key(key: np.ndarray) -> np.random.Generator:
    """A Philox generator with key `key` ((2,) uint64) and counter 0, as SeedSequence would have seeded it."""
    return np.random.Generator(np.random.Philox(_Key(key), counter=_COUNTER_ZERO))


def keyed_generators(prefix, rows) -> list[np.random.Generator]:
    """`Generator(Philox(SeedSequence([*prefix, row])))` for each row of `rows`, the same streams, built faster."""
    rows = list(rows) if not isinstance(rows, (range, np.ndarray)) else rows
    keys = philox_keys(prefix, rows)
    if keys is None:
        return [np.random.Generator(np.random.Philox(np.random.SeedSequence([*prefix, r]))) for r in rows]
    return [generator_from_key(k) for k in keys]
