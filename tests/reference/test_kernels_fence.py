"""The values the fence module's compiled calls compute in one process (the slot, the sequence numbers and
whether every number reached k) equal their NumPy twins; `fence` itself orders memory and has none."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2_reference.kernels.runtime.fence import (fence, poll_all_reached, poll_all_reached_naive, publish_and_poll,
                                                   publish_and_poll_naive)


@settings(deadline=None, max_examples=60)
@given(seq=st.lists(st.integers(0, 5), min_size=1, max_size=5), k=st.integers(0, 6), polls=st.integers(0, 3),
       data=st.data())
def test_publish_and_poll_give_their_twins_values(seq, k, polls, data):
    seq = np.array(seq, np.int64)
    assert poll_all_reached(seq.copy(), k, polls) == poll_all_reached_naive(seq, k, polls)
    rank = data.draw(st.integers(0, len(seq) - 1))
    message = np.frombuffer(data.draw(st.binary(max_size=16)), np.uint8).copy()
    slot = np.zeros(16, np.uint8)
    want_slot, want_seq, want = publish_and_poll_naive(slot, message, seq, rank, k, polls)
    got = publish_and_poll(slot, message, seq, rank, k, polls)
    assert got == want and slot.tobytes() == want_slot.tobytes() and seq.tolist() == want_seq.tolist()


def test_twins_against_hand_written_cases():
    assert poll_all_reached_naive(np.array([3, 4]), 3, 1) and not poll_all_reached_naive(np.array([3, 2]), 3, 1)
    assert not poll_all_reached_naive(np.array([3, 4]), 3, 0)  # no poll, no answer
    slot, seq, reached = publish_and_poll_naive(np.zeros(4, np.uint8), np.array([7, 8], np.uint8),
                                                np.array([2, 1]), 1, 2, 1)
    assert slot.tolist() == [7, 8, 0, 0] and seq.tolist() == [2, 2] and reached
    fence()  # callable from Python, returns nothing
