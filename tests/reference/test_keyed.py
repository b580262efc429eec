"""Keyed generators built without a SeedSequence per row: the streams NumPy's SeedSequence gives, bit for bit.

NumPy itself is the reference: every generator is compared with
`Generator(Philox(SeedSequence([seed, purpose, step, row])))`. Numba is loaded here (the kernel is
imported), so `philox_keys` takes kernels/data/seedseq.py; the NumPy derivation is checked alongside it with
the kernel hidden (`numpy_path`), and alone in a process without Numba.
"""

import pickle
import subprocess
import sys
import warnings
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2_train import keyed
from effv2_train.keyed import generator_from_key, keyed_generators, philox_keys
from effv2_reference.kernels.data.seedseq import seedseq_keys
from effv2_train.plan import PURPOSE_AUGMENT, PURPOSE_DROPOUT, keyed_rng, keyed_rngs

# one 32-bit word, two, and many: the entropy grows past SeedSequence's pool of four words
WORDS = st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(2**64, 2**200))
SEEDS = st.one_of(st.integers(0, 2**64 - 1), st.integers(2**64, 2**160))
# the kernel's case: prefix values of one word or two, rows of one word (edges drawn often)
PREFIX_INT = st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32, 2**63 - 1),
                       st.sampled_from([0, 2**32 - 1, 2**32, 2**63 - 1]))
ONE_WORD_ROW = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1]))


def numpy_path():
    """keyed.py as in a process without Numba: the kernel hidden, the NumPy derivation runs."""
    return mock.patch.object(keyed, "_seedseq_kernel", lambda: None)


def seedseq_state(prefix, rows) -> np.ndarray:
    out = [np.random.SeedSequence([*prefix, r]).generate_state(2, np.uint64) for r in rows]
    return np.stack(out) if out else np.empty((0, 2), np.uint64)


def entropy_words(prefix) -> list[int]:
    """SeedSequence's entropy of non-negative ints, written out here rather than taken from keyed.py."""
    return [(v >> (32 * k)) & 0xFFFFFFFF for v in prefix for k in range(max(1, -(-v.bit_length() // 32)))]


def assert_identical(a, b):
    assert a.dtype == b.dtype == np.uint64 and a.shape == b.shape and a.tobytes() == b.tobytes()


def reference(seed, purpose, step, row) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, purpose, step, row])))


def first_draws(g: np.random.Generator) -> tuple:
    """Enough kinds of draw to expose any difference in key, counter or buffered state."""
    return (g.random(3).tobytes(), g.integers(0, 2**63, 2).tobytes(), g.random(dtype=np.float32),
            g.standard_normal(), g.beta(0.3, 0.3), g.bit_generator.random_raw(5).tobytes())


def assert_same_streams(seed, purpose, step, rows):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # wrap-around arithmetic must not warn
        fast = keyed_rngs(seed, purpose, step, rows)
        with numpy_path():
            twin = keyed_rngs(seed, purpose, step, rows)
    rows = list(rows)
    assert len(fast) == len(twin) == len(rows)
    for row, g, h in zip(rows, fast, twin):
        expect = first_draws(reference(seed, purpose, step, row))
        assert first_draws(g) == expect and first_draws(h) == expect, (seed, purpose, step, row)


@settings(max_examples=200)
@given(seed=SEEDS, purpose=st.integers(0, 9), step=st.integers(0, 2**40),
       rows=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8))
def test_streams_equal_seedsequence_streams(seed, purpose, step, rows):
    assert_same_streams(seed, purpose, step, rows)


@settings(max_examples=100)
@given(seed=WORDS, purpose=WORDS, step=WORDS, rows=st.lists(WORDS, max_size=6))
def test_any_number_of_entropy_words(seed, purpose, step, rows):
    """Values of 2**32 and more take several words, so rows of one call can differ in entropy length."""
    assert_same_streams(seed, purpose, step, rows)


@settings(max_examples=100)
@given(seed=SEEDS, purpose=st.integers(0, 9), step=st.integers(0, 2**64),
       rows=st.lists(WORDS, min_size=1, max_size=6))
def test_keys_are_seedsequence_state(seed, purpose, step, rows):
    expect = np.stack([np.random.SeedSequence([seed, purpose, step, r]).generate_state(2, np.uint64) for r in rows])
    assert_identical(philox_keys((seed, purpose, step), rows), expect)
    with numpy_path():
        assert_identical(philox_keys((seed, purpose, step), rows), expect)


@settings(max_examples=100)
@given(prefix=st.lists(PREFIX_INT, max_size=6), rows=st.lists(ONE_WORD_ROW, max_size=40))
def test_kernel_keys_are_the_numpy_paths_and_seedsequences(prefix, rows):
    expect = seedseq_state(prefix, rows)
    got = seedseq_keys(np.array(entropy_words(prefix), np.uint32), np.array(rows, np.int64))
    assert_identical(got, expect)
    assert_identical(philox_keys(prefix, rows), expect)  # through the gate: the kernel
    with numpy_path():
        assert_identical(philox_keys(prefix, rows), expect)
    for row, key in zip(rows, got):
        seeded = np.random.Generator(np.random.Philox(np.random.SeedSequence([*prefix, row])))
        assert generator_from_key(key).random(5).tobytes() == seeded.random(5).tobytes(), (prefix, row)


@pytest.mark.parametrize("rows", [np.arange(40)[::3], np.arange(2**32 - 6, 2**32, dtype=">u4"),
                                  np.arange(9, dtype=np.uint8), np.arange(4, dtype=np.int16)[::-1]])
def test_kernel_takes_integer_arrays_of_any_layout_and_byte_order(rows):
    expect = seedseq_state((3, 2**40), rows.tolist())
    assert_identical(philox_keys((3, 2**40), rows), expect)
    with numpy_path():
        assert_identical(philox_keys((3, 2**40), rows), expect)


def test_the_gate_hands_keyed_the_kernel_once_numba_is_loaded():
    assert keyed._seedseq_kernel() is seedseq_keys


@pytest.mark.parametrize("rows", [[-1], [2**32], [5, 2**32 + 7, 3], np.array([2**64 - 1], np.uint64),
                                  np.array([1, 2**63], np.uint64), np.array([0, -2**63], np.int64)])
def test_kernel_leaves_rows_of_more_than_one_word_to_the_caller(rows):
    """Rows outside [0, 2**32): the kernel answers None, and philox_keys' other paths decide, as without it."""
    assert seedseq_keys(np.array([1, 2, 3], np.uint32), np.asarray(rows)) is None
    with numpy_path():
        twin = philox_keys((1, 2, 3), rows)
    got = philox_keys((1, 2, 3), rows)
    if twin is None:  # a negative row: SeedSequence's own answer, elsewhere (keyed_generators)
        assert got is None
    else:
        assert_identical(got, twin)
        assert_identical(got, seedseq_state((1, 2, 3), [int(r) for r in rows]))


def test_keyed_without_numba_loads_none_and_gives_seedsequences_keys():
    rows = [0, 5, 2**32 - 1]
    code = ("import sys, numpy as np; from effv2_train import keyed; "
            f"keys = keyed.philox_keys((7, 2, 2**40), {rows}); "
            "expect = np.stack([np.random.SeedSequence([7, 2, 2**40, r]).generate_state(2, np.uint64) "
            f"for r in {rows}]); "
            "assert keyed._seedseq_kernel() is None and np.array_equal(keys, expect); "
            "assert 'numba' not in sys.modules, 'numba imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_single_row_and_plain_keyed_rng_agree():
    for args in ((0, PURPOSE_AUGMENT, 0, 0), (3, PURPOSE_DROPOUT, 1199, 63), (2**64 - 1, 6, 2**33, 2**32)):
        assert first_draws(keyed_rngs(*args[:3], [args[3]])[0]) == first_draws(keyed_rng(*args))


@pytest.mark.parametrize("rows", [range(64), range(5, 9), np.arange(7, dtype=np.uint64), np.arange(3, dtype=np.int32),
                                  [np.int64(4), np.uint32(2**32 - 1)], (r for r in (1, 2, 3))])
def test_row_containers(rows):
    rows = list(rows)
    assert_same_streams(11, PURPOSE_AUGMENT, 17, rows)
    assert_same_streams(11, PURPOSE_AUGMENT, 17, np.asarray(rows))


def test_no_rows():
    assert keyed_rngs(0, PURPOSE_AUGMENT, 0, []) == []
    assert keyed_rngs(0, PURPOSE_AUGMENT, 0, range(0)) == []


@pytest.mark.parametrize("key", [(-1, 3, 0, 0), (0, 3, -5, 0), (0, 3, 0, -1), (0, 3, 0, 1.5), (0.0, 3, 0, 1),
                                 (0, 3, 0, "12"), (0, 3, 0, "0x1f"), (0, 3, 0, "x"), (0, 3, 0, True),
                                 (0, 3, 0, [1, 2])])
def test_what_the_fast_path_cannot_take_behaves_as_seedsequence(key):
    """Negative values, floats, strings, bools, nested lists: accepted or refused exactly as NumPy does."""
    try:
        expect = first_draws(reference(*key))
    except Exception as exc:  # noqa: BLE001 (whatever NumPy raises, the same must be raised)
        with pytest.raises(type(exc)):
            keyed_rngs(*key[:3], [key[3]])
    else:
        assert first_draws(keyed_rngs(*key[:3], [key[3]])[0]) == expect


def test_generators_are_independent_objects_and_pickle():
    a, b = keyed_generators((5, PURPOSE_AUGMENT, 2), [1, 1])
    a.random(10)  # drawing from one leaves the other at its start
    assert first_draws(b) == first_draws(reference(5, PURPOSE_AUGMENT, 2, 1))
    c = keyed_generators((5, PURPOSE_AUGMENT, 2), [3])[0]
    c.random(2)
    d = pickle.loads(pickle.dumps(c))
    assert first_draws(c) == first_draws(d)


def test_key_object_answers_only_philox():
    g = keyed_generators((1, 2, 3), [4])[0]
    seq = g.bit_generator.seed_seq
    assert np.array_equal(seq.generate_state(2, np.uint64),
                          np.random.SeedSequence([1, 2, 3, 4]).generate_state(2, np.uint64))
    with pytest.raises(ValueError):
        seq.generate_state(4, np.uint32)
