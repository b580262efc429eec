"""Keyed generators built without a SeedSequence per row: the streams NumPy's SeedSequence gives, bit for bit.

NumPy itself is the reference: every generator is compared with
`Generator(Philox(SeedSequence([seed, purpose, step, row])))`.
"""

import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2_reference.keyed import keyed_generators, philox_keys
from effv2_reference.plan import PURPOSE_AUGMENT, PURPOSE_DROPOUT, keyed_rng, keyed_rngs

# one 32-bit word, two, and many: the entropy grows past SeedSequence's pool of four words
WORDS = st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(2**64, 2**200))
SEEDS = st.one_of(st.integers(0, 2**64 - 1), st.integers(2**64, 2**160))


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
    rows = list(rows)
    assert len(fast) == len(rows)
    for row, g in zip(rows, fast):
        assert first_draws(g) == first_draws(reference(seed, purpose, step, row)), (seed, purpose, step, row)


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
    keys = philox_keys((seed, purpose, step), rows)
    expect = np.stack([np.random.SeedSequence([seed, purpose, step, r]).generate_state(2, np.uint64) for r in rows])
    assert keys.dtype == np.uint64 and np.array_equal(keys, expect)


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
