"""The blocked CNHW <-> padded NHWC copies equal their NumPy twins, whole and by channel blocks."""

from __future__ import annotations

import numpy as np
import pytest

from effv2_reference.kernels.network.layout import (cnhw_to_nhwc_pad_kernel, cnhw_to_nhwc_pad_naive,
                                                    nhwc_crop_to_cnhw_kernel, nhwc_crop_to_cnhw_naive)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,pads", [((3, 2, 5, 4), (1, 1, 1, 1)), ((40, 3, 7, 6), (0, 1, 0, 1)),
                                        ((17, 1, 1, 1), (2, 2, 2, 2)), ((33, 2, 4, 4), (0, 0, 0, 0))])
def test_layout_kernels_match_twins(dtype, shape, pads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    c, n, h, w = shape
    t, b, l, r = pads
    ref = cnhw_to_nhwc_pad_naive(x, pads)
    out = np.full(ref.shape, np.nan, dtype)  # every value must be written, borders included
    for lo, hi in [(0, min(16, c)), (min(16, c), c)]:
        cnhw_to_nhwc_pad_kernel(x, out, t, l, lo, hi)
    np.testing.assert_array_equal(out, ref)
    back = np.full(shape, np.nan, dtype)
    for lo, hi in [(0, min(16, c)), (min(16, c), c)]:
        nhwc_crop_to_cnhw_kernel(out, back, t, l, lo, hi)
    np.testing.assert_array_equal(back, nhwc_crop_to_cnhw_naive(out, t, l, h, w))
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k,stride,pads,hw", [(3, 1, (1, 1, 1, 1), (5, 6)), (3, 2, (0, 1, 0, 1), (6, 6)),
                                              (5, 2, (1, 2, 2, 1), (7, 5)), (3, 2, (1, 1, 1, 1), (1, 1)),
                                              (1, 2, (0, 0, 0, 0), (5, 5))])
def test_im2col_with_padding_equals_padded_copy(dtype, k, stride, pads, hw):
    """im2col / col2im on the unpadded input equal the kernels on an explicitly padded copy."""
    from effv2_reference.kernels.network.im2col import col2im_naive, im2col_naive
    from effv2_reference.ops.conv import col2im, im2col, out_size, pad

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2) + hw).astype(dtype)
    t, b, l, r = pads
    ho, wo = out_size(hw[0], k, stride, t, b), out_size(hw[1], k, stride, l, r)
    xp = pad(x, pads)
    cols = im2col(x, k, stride, ho, wo, pads)
    np.testing.assert_array_equal(cols, im2col_naive(xp, k, stride, ho, wo))
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dxp = col2im_naive(dcols, xp.shape, k, stride, ho, wo)
    np.testing.assert_allclose(col2im(dcols, x.shape, k, stride, ho, wo, pads), dxp[:, :, t:t + hw[0], l:l + hw[1]],
                               rtol=1e-6 if dtype == np.float32 else 1e-15, atol=1e-6 if dtype == np.float32 else 1e-15)


# ---- random shapes, asymmetric pads, partial channel ranges (the kernels against the NumPy twins) ----
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _layout_cases(draw):
    c = draw(st.integers(1, 70))
    shape = (c, draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    cuts = sorted(set(draw(st.lists(st.integers(1, c - 1), max_size=3)) if c > 1 else []))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return shape, pads, [0] + cuts + [c], dtype


# cheap examples (milliseconds): more of them than the ci profile's default
@settings(max_examples=max(100, settings.default.max_examples))
@given(case=_layout_cases(), seed=st.integers(0, 2**16))
def test_layout_kernels_random_shapes_and_channel_ranges(case, seed):
    """Any split of the channels into ranges c0:c1 (not only multiples of 16) gives the twins' arrays exactly,
    and a range writes its own channels only (the others keep their NaN)."""
    shape, pads, bounds, dtype = case
    c, n, h, w = shape
    t, b, l, r = pads
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    ref = cnhw_to_nhwc_pad_naive(x, pads)
    out = np.full(ref.shape, np.nan, dtype)
    back = np.full(shape, np.nan, dtype)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        cnhw_to_nhwc_pad_kernel(x, out, t, l, lo, hi)
        assert np.isnan(out[..., hi:]).all()
        nhwc_crop_to_cnhw_kernel(ref, back, t, l, lo, hi)
        assert np.isnan(back[hi:]).all()
    assert np.array_equal(out, ref)
    assert np.array_equal(back, nhwc_crop_to_cnhw_naive(ref, t, l, h, w))
    assert np.array_equal(back, x)


@pytest.mark.parametrize("c,n,h,w,pads", [(96, 64, 8, 8, (0, 1, 0, 1)), (160, 64, 4, 4, (1, 1, 1, 1)),
                                          (160, 64, 2, 2, (0, 0, 0, 0)), (96, 5, 3, 3, (0, 0, 0, 0))])
def test_layout_kernels_on_training_shapes(c, n, h, w, pads):
    """The depthwise layers' shapes of the nano run (channel rows 4 KiB apart, tiles of 64 positions
    spanning samples), split as the pool splits them (multiples of 16)."""
    x = np.random.default_rng(2).standard_normal((c, n, h, w)).astype(np.float32)
    t, b, l, r = pads
    ref = cnhw_to_nhwc_pad_naive(x, pads)
    out = np.full(ref.shape, np.nan, np.float32)
    for lo, hi in [(0, 48), (48, c)]:
        cnhw_to_nhwc_pad_kernel(x, out, t, l, lo, hi)
    assert np.array_equal(out, ref)
    back = np.full(x.shape, np.nan, np.float32)
    for lo, hi in [(0, 32), (32, c)]:
        nhwc_crop_to_cnhw_kernel(ref, back, t, l, lo, hi)
    assert np.array_equal(back, x)
