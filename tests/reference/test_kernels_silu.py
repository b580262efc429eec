"""The SiLU kernel with its own vectorised exp equals its NumPy twin (float32 and float64)."""

from __future__ import annotations

import numpy as np
import pytest

from effv2_reference.kernels.network.silu import silu_exp_forward, silu_exp_forward_naive

TOL = {np.float64: 4e-16, np.float32: 3e-7}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 255, 256, 1000, 4099])
def test_silu_exp_matches_twin(dtype, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 8).astype(dtype)
    x[: min(n, 6)] = [0.0, -0.0, 1e-30, -90.0, 90.0, -3.0][: min(n, 6)]
    s, y = np.empty_like(x), np.empty_like(x)
    silu_exp_forward(x, s, y)
    ref_s, ref_y = silu_exp_forward_naive(x)
    assert s.dtype == y.dtype == dtype
    # relative error per value (sigmoid > 0; silu relative to max(|x|, 1))
    assert np.max(np.abs(s - ref_s) / ref_s) <= 4 * TOL[dtype]
    assert np.max(np.abs(y - ref_y) / np.maximum(np.abs(x), 1)) <= 4 * TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_silu_exp_extremes(dtype):
    x = np.array([-1e4, -800, -100, 100, 800, 1e4, np.inf, np.nan], dtype=dtype)
    s, y = np.empty_like(x), np.empty_like(x)
    silu_exp_forward(x, s, y)
    assert np.all(s[:3] < 1e-30) and np.all(s[:3] >= 0) and np.all(np.abs(y[:3]) < 1e-25)
    assert np.all(s[3:7] == 1.0) and np.array_equal(y[3:7], x[3:7])
    assert np.isnan(y[7])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_compiled_entry_point_with_its_constants_matches_the_twin(dtype):
    """silu_exp_forward_kernel called as bn_silu.py calls it (constants passed in) against its twin."""
    from effv2_reference.kernels.network.silu import silu_constants, silu_exp_forward_kernel

    x = np.linspace(-60, 60, 1001).astype(dtype)
    s, y = np.empty_like(x), np.empty_like(x)
    silu_exp_forward_kernel(x, s, y, silu_constants(dtype))
    ref_s, ref_y = silu_exp_forward_naive(x)
    assert np.max(np.abs(s - ref_s) / ref_s) <= 4 * TOL[dtype]
    assert np.max(np.abs(y - ref_y) / np.maximum(np.abs(x), 1)) <= 4 * TOL[dtype]
