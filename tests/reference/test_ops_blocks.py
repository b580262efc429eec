"""Squeeze-excite, drop path, dropout, pooling and dense: closed forms and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from effv2_reference.gradcheck import gradcheck
from effv2_reference.ops import (dense_backward, dense_forward, drop_path_backward, drop_path_forward,
                                 dropout_backward, dropout_forward, global_avg_pool_backward,
                                 global_avg_pool_forward, keep_mask, squeeze_excite_backward,
                                 squeeze_excite_forward)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("activation", ["silu", "relu", "relu6", "hard_swish"])
def test_squeeze_excite_forward_and_gradcheck(activation):
    c, r = 6, 2
    x = RNG.standard_normal((c, 3, 4, 5))
    ws = {"wr": RNG.standard_normal((r, c, 1, 1)), "br": RNG.standard_normal(r),
          "we": RNG.standard_normal((c, r, 1, 1)), "be": RNG.standard_normal(c)}

    def f(a):
        return squeeze_excite_forward(a["x"], a["wr"], a["br"], a["we"], a["be"], activation=activation)[0]

    # forward by the written definition, one sample at a time
    y = f({"x": x, **ws})
    from effv2_reference.ops import activation_forward
    for n in range(3):
        s = x[:, n].mean(axis=(1, 2))
        h = activation_forward(activation, ws["wr"][:, :, 0, 0] @ s + ws["br"])[0]
        gate = 1 / (1 + np.exp(-(ws["we"][:, :, 0, 0] @ h + ws["be"])))
        np.testing.assert_allclose(y[:, n], x[:, n] * gate[:, None, None], rtol=1e-13)

    def analytic(a, rr):
        _, cache = squeeze_excite_forward(a["x"], a["wr"], a["br"], a["we"], a["be"], activation=activation)
        dx, dwr, dbr, dwe, dbe = squeeze_excite_backward(rr, cache, activation=activation)
        return {"x": dx, "wr": dwr, "br": dbr, "we": dwe, "be": dbe}

    gradcheck(f, {"x": x, **ws}, analytic, rtol=1e-7)


def test_drop_path_scales_kept_samples_and_zeroes_dropped():
    branch = RNG.standard_normal((3, 4, 2, 2))
    mask = np.array([1.0, 0.0, 1.0, 0.0])
    y, scale = drop_path_forward(branch, mask, 0.25)
    np.testing.assert_allclose(y[:, 0], branch[:, 0] / 0.75, rtol=1e-15)
    assert not y[:, 1].any() and not y[:, 3].any()
    g = RNG.standard_normal(y.shape)
    np.testing.assert_allclose(drop_path_backward(g, scale), g * mask[None, :, None, None] / 0.75, rtol=1e-15)


def test_dropout_and_keep_mask():
    x = RNG.standard_normal((4, 5))
    mask = (RNG.random((4, 5)) > 0.3).astype(float)
    y, scale = dropout_forward(x, mask, 0.3)
    np.testing.assert_allclose(y, x * mask / 0.7, rtol=1e-15)
    np.testing.assert_allclose(dropout_backward(np.ones_like(x), scale), mask / 0.7, rtol=1e-15)
    m = keep_mask(np.random.default_rng(3), (20000,), 0.2, np.float32)
    assert m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
    assert abs(m.mean() - 0.8) < 0.01  # Bernoulli(keep = 0.8), 20000 draws: std 0.003


def test_global_avg_pool_and_dense_gradcheck():
    x = RNG.standard_normal((5, 3, 4, 3))
    f_, shape = global_avg_pool_forward(x)
    np.testing.assert_allclose(f_, x.mean(axis=(2, 3)).T, rtol=1e-14)
    w, b = RNG.standard_normal((4, 5)), RNG.standard_normal(4)

    def f(a):
        return dense_forward(global_avg_pool_forward(a["x"])[0], a["w"], a["b"])[0]

    def analytic(a, r):
        feats, shp = global_avg_pool_forward(a["x"])
        df, dw, db = dense_backward(r, dense_forward(feats, a["w"], a["b"])[1])
        return {"x": global_avg_pool_backward(df, shp), "w": dw, "b": db}

    gradcheck(f, {"x": x, "w": w, "b": b}, analytic, rtol=1e-8)
