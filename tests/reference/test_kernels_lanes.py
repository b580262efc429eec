"""The vector-IR row sums (kernels/network/lanes.py, behind elementwise._row_sum / _row_dot / _row_centred_squares)
give exactly the bits of the 8-partial-sum order written out in plain Python floats."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numba import njit

from effv2_reference.kernels.network.elementwise import (_row_centred_squares, _row_dot, _row_sum, bn_moments_kernel,
                                                         row_centred_squares_naive, row_dot_naive, row_sum_naive)
from effv2_reference.kernels.network.lanes import (lanes_centred_squares, lanes_centred_squares_naive, lanes_dot,
                                                   lanes_dot_naive, lanes_sum, lanes_sum_naive)


@njit(cache=False)
def _sums(x, y, mu, out):
    for r in range(x.shape[0]):
        out[0, r] = _row_sum(x[r])
        out[1, r] = _row_dot(x[r], y[r])
        out[2, r] = _row_centred_squares(x[r], mu[r])


@njit(cache=False)
def _lanes(x, y, mu, out):
    for r in range(x.shape[0]):
        out[0, r] = lanes_sum(x[r])
        out[1, r] = lanes_dot(x[r], y[r])
        out[2, r] = lanes_centred_squares(x[r], mu[r])


def _in_order(terms) -> float:
    """Partial j adds terms j, j + 8, ... in turn (IEEE double adds, one at a time); the partials are combined
    as ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)), then the terms past the last multiple of 8 added
    from 0.0 in turn."""
    n = len(terms)
    end = n - n % 8
    s = [0.0] * 8
    for i in range(end):
        s[i % 8] = s[i % 8] + float(terms[i])
    tail = 0.0
    for i in range(end, n):
        tail = tail + float(terms[i])
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])) + tail


def _expected(x, y, mu):
    out = np.empty((3, x.shape[0]))
    for r in range(x.shape[0]):
        out[0, r] = _in_order(x[r].astype(np.float64))
        out[1, r] = _in_order(x[r].astype(np.float64) * y[r].astype(np.float64))
        d = (x[r] - mu[r]).astype(x.dtype).astype(np.float64)  # the difference rounded to the row's dtype
        out[2, r] = _in_order(d * d)
    return out


def _twins(x, y, mu, lanes_only: bool):
    """The NumPy twins of the intrinsics (lanes_only) or of elementwise's row helpers, row by row."""
    if lanes_only:
        fns = (lanes_sum_naive, lanes_dot_naive, lanes_centred_squares_naive)
    else:
        fns = (row_sum_naive, row_dot_naive, row_centred_squares_naive)
    return np.array([[fns[0](x[r]) for r in range(x.shape[0])], [fns[1](x[r], y[r]) for r in range(x.shape[0])],
                     [fns[2](x[r], mu[r]) for r in range(x.shape[0])]]).reshape(3, x.shape[0])


def _same_bits(got, want):
    assert np.array_equal(got, want, equal_nan=True), np.argwhere(~((got == want) | (np.isnan(got) & np.isnan(want))))


def _check(x, y, mu):
    """The row helpers against the order written out and against their twins; the intrinsics (the first
    n - n % 8 values) against theirs, and against the order written out on those values."""
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    got = np.empty((3, x.shape[0]))
    _sums(x, y, mu, got)
    _same_bits(got, _expected(x, y, mu))
    _same_bits(got, _twins(x, y, mu, lanes_only=False))
    _lanes(x, y, mu, got)
    _same_bits(got, _twins(x, y, mu, lanes_only=True))
    end = x.shape[1] - x.shape[1] % 8
    _same_bits(got, _expected(x[:, :end], y[:, :end], mu))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 8197])
def test_every_length_and_tail(dtype, n):
    rng = np.random.default_rng(n)
    # magnitudes from 1e-3 to 1e3 across rows and within them: adds that round differently in another order
    x = (rng.standard_normal((4, n)) * 10.0 ** rng.uniform(-3, 3, (4, n))).astype(dtype)
    y = rng.standard_normal((4, n)).astype(dtype)
    _check(x, y, x[:, :1].mean(axis=1).astype(dtype) if n else np.zeros(4, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inf_nan_and_signed_zero(dtype):
    x = np.array([[np.inf, 1, 2, 3, 4, 5, 6, 7, -np.inf, 1],
                  [np.nan] + [1.0] * 9,
                  [-0.0] * 10,
                  [1e30, -1e30, 1, 1, 1, 1, 1, 1, 3, 4]], dtype=dtype)
    _check(x, np.ones_like(x), np.zeros(4, dtype))
    got = np.empty((3, 4))
    _sums(x, np.ones_like(x), np.zeros(4, dtype), got)
    assert np.isnan(got[0, 0]) and np.isnan(got[0, 1])
    assert got[0, 2] == 0.0 and not np.signbit(got[0, 2])  # partials start at +0.0, as the scalar loops did


@settings(max_examples=40)
@given(dtype=st.sampled_from([np.float32, np.float64]), data=st.data())
def test_random_rows(dtype, data):
    rows = data.draw(st.integers(1, 3))
    n = data.draw(st.integers(0, 40))
    finite = st.floats(-1e6, 1e6, allow_nan=False, width=32 if dtype == np.float32 else 64)
    x = data.draw(hnp.arrays(dtype, (rows, n), elements=finite))
    y = data.draw(hnp.arrays(dtype, (rows, n), elements=finite))
    mu = data.draw(hnp.arrays(dtype, (rows,), elements=finite))
    _check(x, y, mu)


def test_moments_kernel_uses_them():
    """bn_moments_kernel (mean, then the centred squares on the rounded mean) from the same written-out order."""
    x = (np.random.default_rng(5).standard_normal((3, 1001)) * 50 + 7).astype(np.float32)
    mean, var = np.empty(3, np.float32), np.empty(3, np.float32)
    bn_moments_kernel(x, mean, var)
    for r in range(3):
        m = np.float32(_in_order(x[r].astype(np.float64)) / 1001)
        d = (x[r] - m).astype(np.float64)
        assert mean[r] == m and var[r] == np.float32(_in_order(d * d) / 1001)
