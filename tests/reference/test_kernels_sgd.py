"""The one-pass SGD kernels (kernels/network/sgd.py) give the bits of their NumPy twins, which follow the
docs' sequence (e = g + decay * w; v = momentum * v + e; w -= lr * (e + momentum * v) or lr * v)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2_reference.kernels.network.sgd import (sgd_momentum_kernel, sgd_momentum_naive, sgd_momentum_segments_kernel,
                                                 sgd_momentum_segments_naive)


def test_twin_against_hand_computed_values():
    w, g, v = np.array([1.0, -2.0]), np.array([0.5, 0.25]), np.array([1.0, 0.0])
    new_w, new_v = sgd_momentum_naive(w, g, v, 0.5, 0.5, 0.5, False)
    # e = g + 0.5 w = [1, -0.75]; v = 0.5 v + e = [1.5, -0.75]; w - 0.5 v
    assert new_v.tolist() == [1.5, -0.75] and new_w.tolist() == [0.25, -1.625]
    new_w, _ = sgd_momentum_naive(w, g, v, 0.5, 0.5, 0.5, True)  # w - 0.5 (e + 0.5 v)
    assert new_w.tolist() == [1.0 - 0.5 * 1.75, -2.0 + 0.5 * 1.125]


@settings(deadline=None, max_examples=30)
@given(n=st.integers(0, 70), dtype=st.sampled_from([np.float32, np.float64]), nesterov=st.booleans(),
       decay=st.sampled_from([0.0, 1e-2, 4e-5]), seed=st.integers(0, 2 ** 32 - 1))
def test_one_tensor_gives_the_twins_bits(n, dtype, nesterov, decay, seed):
    rng = np.random.default_rng(seed)
    w, g, v = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    want_w, want_v = sgd_momentum_naive(w, g, v, 0.05, 0.9, decay, nesterov)
    t = np.dtype(dtype).type
    sgd_momentum_kernel(w, g, v, t(0.05), t(0.9), t(decay), nesterov)
    assert w.tobytes() == want_w.tobytes() and v.tobytes() == want_v.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [[1], [3, 0, 17], [64, 9, 300, 2]])
@pytest.mark.parametrize("nesterov", [True, False])
def test_segments_give_the_twins_bits(dtype, sizes, nesterov):
    rng = np.random.default_rng(len(sizes))
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    w, g, v = (rng.standard_normal(bounds[-1]).astype(dtype) for _ in range(3))
    decays = rng.choice([0.0, 1e-3, 0.5], len(sizes)).astype(dtype)
    want_w, want_v = sgd_momentum_segments_naive(w, g, v, bounds, decays, 0.1, 0.9, nesterov)
    t = np.dtype(dtype).type
    sgd_momentum_segments_kernel(w, g, v, bounds, decays, t(0.1), t(0.9), nesterov)
    assert w.tobytes() == want_w.tobytes() and v.tobytes() == want_v.tobytes()
