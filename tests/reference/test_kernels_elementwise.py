"""The fused elementwise kernels (BN statistics, normalise, gradient sums and dx, eval BN, SiLU backward)
equal their NumPy twins."""

from __future__ import annotations

import numpy as np
import pytest

from effv2_reference.kernels.network.elementwise import (affine_rows_kernel, affine_rows_naive, bn_backward_dx_kernel,
                                                  bn_backward_dx_naive, bn_center_normalize_kernel,
                                                  bn_center_normalize_naive, bn_grad_sums_kernel, bn_grad_sums_naive,
                                                  bn_moments_kernel, bn_moments_naive, silu_backward_kernel,
                                                  silu_backward_naive)

TOL = {np.float64: 1e-14, np.float32: 1e-6}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 17), (16, 1000), (1, 1)])
def test_bn_kernels_match_twins(dtype, shape):
    rng = np.random.default_rng(0)
    c = shape[0]
    x, mean = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(c)
    inv, gamma, beta = rng.random(c) + 0.5, rng.standard_normal(c), rng.standard_normal(c)
    ref_xhat, ref_y = bn_center_normalize_naive(x, mean, inv, gamma, beta)
    xhat, y = np.empty(shape, dtype), np.empty(shape, dtype)
    bn_center_normalize_kernel(*(a.astype(dtype) for a in (x, mean, inv, gamma, beta)), xhat, y)
    np.testing.assert_allclose(xhat, ref_xhat, rtol=TOL[dtype] * 8, atol=TOL[dtype] * 8 * np.abs(ref_xhat).max())
    np.testing.assert_allclose(y, ref_y, rtol=TOL[dtype] * 8, atol=TOL[dtype] * 8 * np.abs(ref_y).max())

    dy = rng.standard_normal(shape)
    scale, a, b = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c)
    ref = bn_backward_dx_naive(dy, ref_xhat, scale, a, b)
    dx = np.empty(shape, dtype)
    bn_backward_dx_kernel(dy.astype(dtype), ref_xhat.astype(dtype), scale.astype(dtype), a.astype(dtype),
                          b.astype(dtype), dx)
    np.testing.assert_allclose(dx, ref, rtol=0, atol=TOL[dtype] * 16 * np.abs(ref).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_silu_backward_kernel_matches_its_twin(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(5000) * 6).astype(dtype)
    s = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(dtype)
    dy = rng.standard_normal(5000).astype(dtype)
    ref = silu_backward_naive(dy.astype(np.float64), x.astype(np.float64), s.astype(np.float64))
    dx = np.empty_like(x)
    silu_backward_kernel(dy, x, s, dx)
    np.testing.assert_allclose(dx, ref, rtol=TOL[dtype] * 8, atol=TOL[dtype] * 8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 17), (16, 1000), (1, 1)])
def test_affine_rows_kernel_matches_its_twin(dtype, shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(dtype)
    scale, shift = rng.standard_normal(shape[0]).astype(dtype), rng.standard_normal(shape[0]).astype(dtype)
    y = np.full(shape, np.nan, dtype)
    affine_rows_kernel(x, scale, shift, y)
    ref = affine_rows_naive(x.astype(np.float64), scale.astype(np.float64), shift.astype(np.float64))
    np.testing.assert_allclose(y, ref, rtol=TOL[dtype] * 4, atol=TOL[dtype] * 4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 17), (16, 1000), (1, 1), (5, 8), (2, 7), (4, 32768)])
def test_bn_row_reductions_match_float64_sums(dtype, shape):
    """Mean, variance and the two gradient sums against float64 NumPy sums (the kernels accumulate in
    float64 too, over 8 interleaved partial sums: only the order of the additions differs).
    A large offset makes a float32 sum of the raw values lose digits that these must keep."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3 + 1000).astype(dtype)
    mean, var = np.empty(shape[0], dtype), np.empty(shape[0], dtype)
    bn_moments_kernel(x, mean, var)
    ref_mean, ref_var = bn_moments_naive(x)
    np.testing.assert_allclose(mean, ref_mean, rtol=TOL[dtype], atol=0)
    exact_var = x.astype(np.float64).var(axis=1)
    # x - mean is exact here (Sterbenz: both near 1000), so only the float64 sums round
    np.testing.assert_allclose(var, exact_var, rtol=1e-12 if dtype == np.float64 else 1e-6, atol=1e-300)
    np.testing.assert_allclose(var, ref_var, rtol=TOL[dtype] * 4, atol=1e-300)

    dy = rng.standard_normal(shape).astype(dtype)
    xhat = rng.standard_normal(shape).astype(dtype)
    dbeta, dgamma = np.empty(shape[0], dtype), np.empty(shape[0], dtype)
    bn_grad_sums_kernel(dy, xhat, dbeta, dgamma)
    ref_b, ref_g = (dy.astype(np.float64).sum(axis=1),
                    (dy.astype(np.float64) * xhat.astype(np.float64)).sum(axis=1))
    scale = np.abs(dy).sum(axis=1).astype(np.float64) + np.abs(dy * xhat).sum(axis=1)
    assert np.all(np.abs(dbeta - ref_b) <= TOL[dtype] * scale + 1e-300)
    assert np.all(np.abs(dgamma - ref_g) <= TOL[dtype] * scale + 1e-300)
    np.testing.assert_allclose([dbeta, dgamma], bn_grad_sums_naive(dy, xhat), rtol=0,
                               atol=TOL[dtype] * 4 * scale.max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (4, 5, 2, 2), (16, 8, 7, 9), (3, 2, 33, 17)])
def test_plane_reductions_and_scaling(dtype, shape):
    """ops/planes.py (squeeze-excite and the head's pool) against float64 NumPy on the same planes,
    also for a non-contiguous input (a transposed view)."""
    from effv2_reference.ops.planes import plane_dots, plane_means, scale_planes

    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    g, shift = rng.random(shape[:2]).astype(dtype), rng.standard_normal(shape[:2]).astype(dtype)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    np.testing.assert_allclose(plane_means(x), x64.mean(axis=(2, 3)), rtol=TOL[dtype], atol=0)
    dots = plane_dots(dy, x)
    ref = (dy64 * x64).sum(axis=(2, 3))
    assert np.all(np.abs(dots - ref) <= TOL[dtype] * 2 * np.abs(dy64 * x64).sum(axis=(2, 3)) + 1e-300)
    y = scale_planes(x, g)
    assert y.dtype == dtype and y.tobytes() == (x * g[:, :, None, None]).tobytes()  # one rounding, as NumPy
    y = scale_planes(dy, g, shift)
    assert y.tobytes() == (dy * g[:, :, None, None] + shift[:, :, None, None]).tobytes()
    xt = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)  # same values, other strides
    assert plane_means(xt).tobytes() == plane_means(x).tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 17), (16, 1000), (1, 1), (5, 8), (2, 7), (4, 32768)])
def test_moments_and_centring_round_where_the_numpy_expressions_round(dtype, shape):
    """bn_moments_kernel's variance is the float64 sum of the squares of x - mean as rounded to the dtype
    (the centred values the normalisation uses, summed by the partial sums of row_dots_kernel), and
    bn_center_normalize_kernel rounds each of its operations as NumPy's float arithmetic does, whether it
    centres on this process's mean or on a group's mean moved by other processes' rows."""
    from effv2_reference.kernels.network.elementwise import row_dots_kernel

    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + 7).astype(dtype)
    moments = np.full((2, shape[0]), np.nan, dtype)
    bn_moments_kernel(x, moments[0], moments[1])
    centred = (x - moments[0][:, None]).astype(np.float64)  # each difference rounded to the dtype first
    squares = np.empty(shape[0], np.float64)
    row_dots_kernel(centred, centred, squares)  # float64 products and the same 8 partial sums
    assert np.array_equal(moments[1], (squares / shape[1]).astype(dtype))
    np.testing.assert_allclose(moments[1], x.astype(np.float64).var(axis=1), rtol=TOL[dtype] * 8, atol=1e-300)

    for mean in (moments[0], (moments[0] + rng.standard_normal(shape[0]) * 0.1).astype(dtype)):
        inv, gamma, beta = (rng.random((3, shape[0])) + 0.5).astype(dtype)
        xhat, y = np.empty(shape, dtype), np.empty(shape, dtype)
        bn_center_normalize_kernel(x, mean, inv, gamma, beta, xhat, y)
        want_xhat = (x - mean[:, None]) * inv[:, None]
        assert np.array_equal(xhat, want_xhat)
        assert np.array_equal(y, want_xhat * gamma[:, None] + beta[:, None])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("span", [1, 2, 3, 4])
@pytest.mark.parametrize("m", [1, 7, 512, 8192])
def test_spanning_bn_combination_gives_the_bits_of_the_numpy_expressions(dtype, span, m):
    """The group statistics from each process's (mean, centred sum of squares), and the backward's factors
    from the group's gradient sums: the kernels against the NumPy expressions they replace, bit for bit;
    and the combined mean / variance against the variance of all the values at once."""
    from effv2_reference.kernels.network.elementwise import (bn_span_backward_dx_kernel, bn_span_backward_naive,
                                                      bn_span_moments_kernel, bn_span_moments_naive)

    rng = np.random.default_rng(span * 1000 + m)
    c = 37
    x = (rng.standard_normal((span, c, m)) * rng.random((1, c, 1)) * 5 + rng.standard_normal((1, c, 1)) * 3)
    x = x.astype(dtype)
    parts = np.empty((span, 2, c), dtype)
    for q in range(span):
        bn_moments_kernel(np.ascontiguousarray(x[q]), parts[q, 0], parts[q, 1])
    parts[:, 1] *= m
    eps = 1e-3
    mean, var, inv = (np.full(c, np.nan, dtype) for _ in range(3))
    t = dtype
    bn_span_moments_kernel(parts, t(span), t(m), t(m * span), t(eps), mean, var, inv)
    ref = bn_span_moments_naive(parts, m, eps)
    for got, want in zip((mean, var, inv), ref):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    whole = x.transpose(1, 0, 2).reshape(c, -1).astype(np.float64)
    np.testing.assert_allclose(mean, whole.mean(axis=1), rtol=TOL[dtype] * 16, atol=TOL[dtype] * 16)
    np.testing.assert_allclose(var, whole.var(axis=1), rtol=TOL[dtype] * 64, atol=TOL[dtype] * 64)

    dy, xhat = (rng.standard_normal((c, m)).astype(dtype) for _ in range(2))
    gamma, sums = rng.standard_normal(c).astype(dtype), rng.standard_normal((2, c)).astype(dtype) * m
    dx = np.full((c, m), np.nan, dtype)
    bn_span_backward_dx_kernel(dy, xhat, gamma, inv, sums, t(m * span), dx)
    assert np.array_equal(dx, bn_span_backward_naive(dy, xhat, gamma, inv, sums, m * span))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 8), (4, 65), (2, 1031)])
def test_plane_kernels_and_running_stats_give_their_twins_bits(dtype, shape):
    """row_means_kernel, row_dots_kernel and running_stats_kernel against their NumPy twins, bit for bit
    (the twins add in the kernels' 8-lane order), and the twins against float64 NumPy at a tolerance."""
    from effv2_reference.kernels.network.elementwise import (row_dots_kernel, row_dots_naive, row_means_kernel,
                                                             row_means_naive, running_stats_kernel,
                                                             running_stats_naive)

    rng = np.random.default_rng(shape[1])
    a = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-2, 2, shape)).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    means, dots = np.empty(shape[0], dtype), np.empty(shape[0], dtype)
    row_means_kernel(a, means)
    row_dots_kernel(a, b, dots)
    assert means.tobytes() == row_means_naive(a).tobytes() and dots.tobytes() == row_dots_naive(a, b).tobytes()
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    np.testing.assert_allclose(means, a64.mean(axis=1), rtol=TOL[dtype], atol=TOL[dtype] * np.abs(a64).max())
    np.testing.assert_allclose(dots, (a64 * b64).sum(axis=1), rtol=0,
                               atol=4 * TOL[dtype] * np.abs(a64 * b64).sum(axis=1).max())

    c = shape[0]
    mean, var = rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype)
    for momentum, factor in ((0.1, 1.0), (0.01, shape[1] / max(shape[1] - 1, 1))):
        rm, rv = rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype)
        want = running_stats_naive(rm, rv, mean, var, 1 - momentum, momentum, factor)
        t = np.dtype(dtype).type
        running_stats_kernel(rm, rv, mean, var, t(1 - momentum), t(momentum), t(factor))
        assert rm.tobytes() == want[0].tobytes() and rv.tobytes() == want[1].tobytes()


def test_running_stats_twin_against_hand_computed_values():
    from effv2_reference.kernels.network.elementwise import running_stats_naive

    rm, rv = running_stats_naive(np.array([1.0, 2.0]), np.array([4.0, 0.0]), np.array([3.0, 2.0]),
                                 np.array([8.0, 1.0]), 0.75, 0.25, 2.0)
    assert rm.tolist() == [1.5, 2.0] and rv.tolist() == [7.0, 0.5]  # 4 * .75 + .25 * 8 * 2; 0 + .25 * 1 * 2


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 9, 300])
def test_bn_dx_row_helper_gives_its_twins_bits(dtype, n):
    """elementwise._bn_dx_row (inlined into bn_silu's kernels) against bn_backward_dx_naive on one row."""
    from numba import njit

    from effv2_reference.kernels.network.elementwise import _bn_dx_row

    @njit(cache=False)
    def row(dr, xr, s, a, b, out):
        _bn_dx_row(dr, xr, s, a, b, out)

    rng = np.random.default_rng(n)
    dy, xhat = rng.standard_normal((2, 1, n)).astype(dtype)
    scale, mean_dy, mean_dy_xhat = rng.standard_normal((3, 1)).astype(dtype)
    out = np.empty(n, dtype)
    row(dy[0], xhat[0], scale[0], mean_dy[0], mean_dy_xhat[0], out)
    assert out.tobytes() == bn_backward_dx_naive(dy, xhat, scale, mean_dy, mean_dy_xhat)[0].tobytes()
