"""The Philox-key kernel (kernels/data/seedseq.py) against its twin, NumPy's SeedSequence row by row; the
constants it shares with keyed.py's NumPy derivation are NumPy's."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2_train import seedseq_constants as sc
from effv2_reference.kernels.data.seedseq import seedseq_keys_into, seedseq_keys_naive


@settings(deadline=None, max_examples=40)
@given(prefix=st.lists(st.integers(0, 2**32 - 1), max_size=6),
       rows=st.lists(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 2**32 - 1])), max_size=8))
def test_kernel_gives_the_twins_keys(prefix, rows):
    out = np.zeros((len(rows), 2), np.uint64)
    assert seedseq_keys_into(np.array(prefix, np.uint32), np.array(rows, np.int64), out)
    assert out.tobytes() == seedseq_keys_naive(prefix, rows).tobytes()


def test_rows_outside_one_word_are_refused_by_both():
    out = np.zeros((2, 2), np.uint64)
    for rows in ([1, -1], [1, 2**32]):
        assert not seedseq_keys_into(np.array([5], np.uint32), np.array(rows, np.int64), out)
        assert seedseq_keys_naive([5], rows) is None


def test_twin_against_numpys_own_state_and_the_shared_constants():
    """A key NumPy gives (one row), and the constants against the values in numpy/random/bit_generator.pyx."""
    want = np.random.SeedSequence([7, 11, 3]).generate_state(2, np.uint64)
    assert seedseq_keys_naive([7, 11], [3]).tolist() == [want.tolist()]
    assert (sc.INIT_A, sc.MULT_A, sc.INIT_B, sc.MULT_B) == (0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED)
    assert (sc.MIX_L, sc.MIX_R, sc.POOL) == (0xCA01F9DD, 0x4973F715, np.random.SeedSequence().pool_size)
