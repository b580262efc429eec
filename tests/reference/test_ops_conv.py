"""conv2d (dense im2col and depthwise) against a direct definition, closed-form padding and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from effv2_reference.gradcheck import gradcheck
from effv2_reference.ops import conv2d_backward, conv2d_forward, conv_pads


def direct_conv(x, w, stride, pads, groups):
    """The textbook definition on CNHW, one output pixel at a time (float64)."""
    c, n, h, wd = x.shape
    o, cg, k, _ = w.shape
    t, b, l, r = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    ho, wo = (h + t + b - k) // stride + 1, (wd + l + r - k) // stride + 1
    y = np.zeros((o, n, ho, wo))
    for oc in range(o):
        g = oc // (o // groups)
        chans = range(g * cg, (g + 1) * cg)
        for i in range(ho):
            for j in range(wo):
                patch = xp[list(chans), :, i * stride:i * stride + k, j * stride:j * stride + k]  # (cg, n, k, k)
                y[oc, :, i, j] = np.einsum("cnij,cij->n", patch, w[oc])
    return y


@pytest.mark.parametrize("convention,size,k,s,expected", [
    ("tf_same", 16, 3, 2, (0, 1)),  # even size, stride 2: the extra pixel goes after
    ("tf_same", 17, 3, 2, (1, 1)),
    ("tf_same", 16, 3, 1, (1, 1)),
    ("tf_same", 16, 5, 2, (1, 2)),
    ("tf_same", 15, 5, 2, (2, 2)),
    ("tf_same", 7, 1, 2, (0, 0)),
    ("symmetric", 16, 3, 2, (1, 1)),
    ("symmetric", 16, 5, 1, (2, 2)),
])
def test_conv_pads_closed_form(convention, size, k, s, expected):
    top, bottom, left, right = conv_pads(convention, (size, size), k, s)
    assert (top, bottom) == (left, right) == expected


CASES = [  # C, O, N, H, W, k, stride, groups-kind, convention
    (3, 4, 2, 7, 9, 3, 1, "dense", "tf_same"),
    (3, 5, 2, 8, 6, 3, 2, "dense", "tf_same"),
    (2, 3, 1, 9, 8, 5, 2, "dense", "symmetric"),
    (4, 6, 2, 5, 7, 1, 1, "dense", "tf_same"),
    (4, 4, 2, 6, 5, 1, 2, "dense", "tf_same"),
    (4, 4, 2, 8, 9, 3, 2, "depthwise", "tf_same"),
    (3, 3, 2, 7, 7, 5, 1, "depthwise", "symmetric"),
    (3, 3, 1, 10, 6, 3, 2, "depthwise", "symmetric"),
    (2, 2, 2, 6, 6, 7, 1, "depthwise", "tf_same"),
]


def _case(c, o, n, h, w, k, s, kind, conv, seed=0):
    rng = np.random.default_rng(seed)
    groups = c if kind == "depthwise" else 1
    x = rng.standard_normal((c, n, h, w))
    wt = rng.standard_normal((o, c // groups, k, k))
    return x, wt, groups, conv_pads(conv, (h, w), k, s)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "{7}-C{0}O{1}H{3}W{4}k{5}s{6}-{8}".format(*c))
def test_conv_forward_matches_direct_definition(case):
    x, w, groups, pads = _case(*case)
    s = case[6]
    y, _ = conv2d_forward(x, w, stride=s, pads=pads, groups=groups)
    ref = direct_conv(x, w, s, pads, groups)
    assert y.shape == ref.shape == (case[1], case[2], -(-case[3] // s), -(-case[4] // s))
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)
    y32, _ = conv2d_forward(x.astype(np.float32), w.astype(np.float32), stride=s, pads=pads, groups=groups)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("case", CASES, ids=lambda c: "{7}-C{0}O{1}H{3}W{4}k{5}s{6}-{8}".format(*c))
def test_conv_backward_gradcheck(case):
    x, w, groups, pads = _case(*case)
    s = case[6]

    def f(a):
        return conv2d_forward(a["x"], a["w"], stride=s, pads=pads, groups=groups)[0]

    def analytic(a, r):
        _, cache = conv2d_forward(a["x"], a["w"], stride=s, pads=pads, groups=groups)
        dx, dw = conv2d_backward(r, cache)
        return {"x": dx, "w": dw}

    gradcheck(f, {"x": x, "w": w}, analytic, rtol=1e-7)


def test_conv_rejects_unsupported_groups_and_even_kernels():
    x = np.zeros((4, 1, 5, 5))
    with pytest.raises(NotImplementedError):
        conv2d_forward(x, np.zeros((4, 2, 3, 3)), stride=1, pads=(1, 1, 1, 1), groups=2)
    with pytest.raises(ValueError, match="odd"):
        conv2d_forward(x, np.zeros((4, 4, 2, 2)), stride=1, pads=(0, 1, 0, 1), groups=1)


# ---- im2col / col2im kernels against their NumPy twins, exactly ----------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _im2col_cases(draw):
    k = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))  # often smaller than k
    pads = [draw(st.integers(0, 3)) for _ in range(4)]
    # enough padding for at least one output row / column
    pads[1] = max(pads[1], k - h - pads[0])
    pads[3] = max(pads[3], k - w - pads[2])
    c = draw(st.integers(1, 5))
    c0 = draw(st.integers(0, c - 1))
    c1 = draw(st.integers(c0 + 1, c))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return (c, draw(st.integers(1, 3)), h, w), k, stride, tuple(pads), (c0, c1), dtype


# cheap examples (milliseconds): more of them than the ci profile's default
@settings(max_examples=max(100, settings.default.max_examples))
@given(case=_im2col_cases(), seed=st.integers(0, 2**16))
def test_im2col_col2im_kernels_equal_twins_exactly(case, seed):
    """The kernels on channels c0:c1 of the unpadded input (as ops/conv.py's pieces call them) equal the
    NumPy twins on an explicitly padded copy bit for bit: im2col is a copy, and col2im adds each value's
    taps in the same (i, j) order from 0.0; the other channels' rows are left alone."""
    from effv2_reference.kernels.network.im2col import col2im_crop_kernel, col2im_naive, im2col_naive, im2col_pad_kernel
    from effv2_reference.ops.conv import out_size, pad

    shape, k, stride, pads, (c0, c1), dtype = case
    t, b, l, r = pads
    ho, wo = out_size(shape[2], k, stride, t, b), out_size(shape[3], k, stride, l, r)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    kk = k * k
    cols = np.full((shape[0] * kk, shape[1] * ho * wo), np.nan, dtype)
    im2col_pad_kernel(x[c0:c1], k, stride, t, l, ho, wo, cols[c0 * kk:c1 * kk])
    ref = im2col_naive(pad(x, pads), k, stride, ho, wo)
    assert np.array_equal(cols[c0 * kk:c1 * kk], ref[c0 * kk:c1 * kk])
    assert np.isnan(cols[:c0 * kk]).all() and np.isnan(cols[c1 * kk:]).all()

    dcols = rng.standard_normal(ref.shape).astype(dtype)
    dx = np.full(shape, np.nan, dtype)
    col2im_crop_kernel(dx[c0:c1], k, stride, t, l, ho, wo, dcols[c0 * kk:c1 * kk])
    dxp = col2im_naive(dcols, pad(x, pads).shape, k, stride, ho, wo)
    assert np.array_equal(dx[c0:c1], dxp[c0:c1, :, t:t + shape[2], l:l + shape[3]])
    assert np.isnan(dx[:c0]).all() and np.isnan(dx[c1:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c,size,stride,pads", [(3, 32, 2, (0, 1, 0, 1)), (16, 16, 1, (1, 1, 1, 1)),
                                                (16, 16, 2, (0, 1, 0, 1)), (16, 12, 2, (0, 1, 0, 1)),
                                                (16, 8, 1, (1, 1, 1, 1)), (4, 17, 2, (1, 1, 1, 1))])
def test_im2col_col2im_on_training_shapes(dtype, c, size, stride, pads):
    """The nano run's dense 3x3 convs (batch cut to 5), through ops/conv.py, exactly equal to the twins."""
    from effv2_reference.kernels.network.im2col import col2im_naive, im2col_naive
    from effv2_reference.ops.conv import col2im, im2col, out_size, pad

    rng = np.random.default_rng(3)
    x = rng.standard_normal((c, 5, size, size)).astype(dtype)
    t, b, l, r = pads
    ho, wo = out_size(size, 3, stride, t, b), out_size(size, 3, stride, l, r)
    cols = im2col(x, 3, stride, ho, wo, pads)
    assert np.array_equal(cols, im2col_naive(pad(x, pads), 3, stride, ho, wo))
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dxp = col2im_naive(dcols, pad(x, pads).shape, 3, stride, ho, wo)
    assert np.array_equal(col2im(dcols, x.shape, 3, stride, ho, wo, pads), dxp[:, :, t:t + size, l:l + size])
