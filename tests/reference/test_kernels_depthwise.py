"""The Numba kernels (depthwise, im2col/col2im) equal their slow NumPy twins (and reject what they must)."""

from __future__ import annotations

import numpy as np
import pytest

from effv2_reference.kernels.network.depthwise import (depthwise_backward_kernel, depthwise_backward_naive,
                                                depthwise_backward_samples, depthwise_forward_kernel,
                                                depthwise_forward_naive, depthwise_forward_samples)
from effv2_reference.kernels.network.im2col import col2im_kernel, col2im_naive, im2col_kernel, im2col_naive

CASES = [  # (C, N, H, W, k, stride)
    (3, 2, 7, 9, 3, 1), (4, 1, 8, 8, 3, 2), (2, 3, 11, 6, 5, 2), (5, 2, 9, 13, 7, 1), (3, 2, 5, 4, 1, 1),
    (2, 1, 10, 9, 5, 1),
]


def _operands(c, n, h, w, k, s, dtype, seed=0):
    """Channels-last operands: xp (N, Hp, Wp, C), w (k, k, C), dy (N, Ho, Wo, C)."""
    rng = np.random.default_rng(seed)
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    xp = rng.standard_normal((n, h, w, c)).astype(dtype)
    wk = rng.standard_normal((k, k, c)).astype(dtype)
    dy = rng.standard_normal((n, ho, wo, c)).astype(dtype)
    return xp, wk, dy, (ho, wo)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "C{}N{}H{}W{}k{}s{}".format(*c))
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 4e-6)])
def test_kernels_match_naive_twins(case, dtype, tol):
    c, n, h, w, k, s = case
    xp, wk, dy, (ho, wo) = _operands(*case, dtype)
    y = np.empty((n, ho, wo, c), dtype=dtype)
    depthwise_forward_kernel(xp, wk, s, y)
    ref = depthwise_forward_naive(xp.astype(np.float64), wk.astype(np.float64), s, (ho, wo))
    assert np.abs(y - ref).max() <= tol * max(1.0, np.abs(ref).max())

    dxp = np.full(xp.shape, np.nan, dtype=dtype)  # the kernel must zero it itself
    dw = np.full(wk.shape, np.nan, dtype=dtype)
    depthwise_backward_kernel(xp, wk, dy, s, dxp, dw)
    ref_dxp, ref_dw = depthwise_backward_naive(xp.astype(np.float64), wk.astype(np.float64),
                                               dy.astype(np.float64), s)
    assert np.abs(dxp - ref_dxp).max() <= tol * max(1.0, np.abs(ref_dxp).max())
    assert np.abs(dw - ref_dw).max() <= tol * max(1.0, np.abs(ref_dw).max())


@pytest.mark.parametrize("case", CASES, ids=lambda c: "C{}N{}H{}W{}k{}s{}".format(*c))
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 4e-6)])
def test_kernels_by_sample_blocks_match_the_naive_twins(case, dtype, tol):
    c, n, h, w, k, s = case
    xp, wk, dy, _ = _operands(*case, dtype, seed=1)
    dxp = np.full(xp.shape, np.nan, dtype=dtype)  # every block zeroes its own samples' rows
    parts = np.full((n,) + wk.shape, np.nan, dtype=dtype)
    for b in range(n):  # one sample per block: the finest split
        depthwise_backward_samples(xp, wk, dy, s, dxp, parts[b], b, b + 1)
    ref_dxp, ref_dw = depthwise_backward_naive(xp.astype(np.float64), wk.astype(np.float64),
                                               dy.astype(np.float64), s)
    assert np.abs(dxp - ref_dxp).max() <= tol * max(1.0, np.abs(ref_dxp).max())
    dw = parts.sum(axis=0)
    assert np.abs(dw - ref_dw).max() <= tol * max(1.0, np.abs(ref_dw).max())
    y = np.full(dy.shape, np.nan, dtype=dtype)
    for b in range(n):
        depthwise_forward_samples(xp, wk, s, y, b, b + 1)
    ref_y = depthwise_forward_naive(xp.astype(np.float64), wk.astype(np.float64), s, dy.shape[1:3])
    assert np.abs(y - ref_y).max() <= tol * max(1.0, np.abs(ref_y).max())


def test_naive_twin_against_hand_computed_values():
    # one channel, 3x3 input, 2x2 kernel would be even; use k=3 on a 3x3 input: one output = full dot product
    xp = np.arange(9, dtype=np.float64).reshape(1, 3, 3, 1)
    w = np.array([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]).reshape(3, 3, 1)  # Sobel x
    y = depthwise_forward_naive(xp, w, 1, (1, 1))
    # sum_ij w*x = (0-2) + 2*(3-5) + (6-8) = -8
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == -8.0
    dxp, dw = depthwise_backward_naive(xp, w, np.ones((1, 1, 1, 1)), 1)
    np.testing.assert_array_equal(dxp[0, :, :, 0], w[:, :, 0])
    np.testing.assert_array_equal(dw[:, :, 0], xp[0, :, :, 0])


def test_kernels_reject_non_contiguous_and_other_dtypes():
    xp, wk, _, (ho, wo) = _operands(2, 1, 6, 6, 3, 1, np.float64)
    y = np.empty((1, ho, wo, 2))
    with pytest.raises(TypeError):
        depthwise_forward_kernel(np.asfortranarray(xp), wk, 1, y)
    with pytest.raises(TypeError):
        depthwise_forward_kernel(xp.astype(np.float16), wk.astype(np.float16), 1, y.astype(np.float16))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "C{}N{}H{}W{}k{}s{}".format(*c))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_im2col_kernels_match_naive_twins(case, dtype):
    c, n, h, w, k, s = case
    rng = np.random.default_rng(1)
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    xp = rng.standard_normal((c, n, h, w)).astype(dtype)
    cols = np.full((c * k * k, n * ho * wo), np.nan, dtype=dtype)
    im2col_kernel(xp, k, s, ho, wo, cols)
    np.testing.assert_array_equal(cols, im2col_naive(xp, k, s, ho, wo))  # a pure copy: exact
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dxp = np.full(xp.shape, np.nan, dtype=dtype)
    col2im_kernel(dxp, k, s, ho, wo, dcols)
    ref = col2im_naive(dcols.astype(np.float64), xp.shape, k, s, ho, wo)
    np.testing.assert_allclose(dxp, ref, rtol=0, atol=(1e-13 if dtype == np.float64 else 4e-6) * np.abs(ref).max())


def test_im2col_naive_is_the_adjoint_of_col2im_naive():
    """<im2col(x), d> == <x, col2im(d)>: the twins are transposes of each other."""
    rng = np.random.default_rng(2)
    xp = rng.standard_normal((3, 2, 9, 8))
    d = rng.standard_normal((3 * 9, 2 * 4 * 3))
    lhs = np.sum(im2col_naive(xp, 3, 2, 4, 3) * d)
    rhs = np.sum(xp * col2im_naive(d, xp.shape, 3, 2, 4, 3))
    assert lhs == pytest.approx(rhs, rel=1e-13)
