"""Batch norm: closed-form statistics, the running-update conventions, finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from effv2_reference.gradcheck import gradcheck
from effv2_reference.ops import (batch_norm_backward, batch_norm_eval_backward, batch_norm_eval_forward,
                                 batch_norm_train_forward, update_running_stats)


def _x(shape=(3, 4, 5, 6), seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * 2.0 + 3.0, rng.standard_normal(shape[0]), rng.standard_normal(shape[0])


def test_train_forward_normalises_per_channel():
    x, gamma, beta = _x()
    y, _, mean, var = batch_norm_train_forward(x, np.ones(3), np.zeros(3), eps=0.0)
    rows = x.reshape(3, -1)
    np.testing.assert_allclose(mean, [r.sum() / r.size for r in rows], rtol=1e-13)
    np.testing.assert_allclose(var, [((r - r.mean()) ** 2).sum() / r.size for r in rows], rtol=1e-12)  # biased
    np.testing.assert_allclose(y.reshape(3, -1).mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(y.reshape(3, -1).std(axis=1), 1, rtol=1e-12)
    y2, _, _, _ = batch_norm_train_forward(x, gamma, beta, eps=1e-3)
    ref = (x - mean[:, None, None, None]) / np.sqrt(var + 1e-3)[:, None, None, None]
    np.testing.assert_allclose(y2, ref * gamma[:, None, None, None] + beta[:, None, None, None], rtol=1e-12)


@pytest.mark.parametrize("kind,factor", [("biased", 1.0), ("unbiased", 120 / 119)])
def test_running_update_convention(kind, factor):
    x, _, _ = _x()  # n = 4*5*6 = 120 values per channel
    _, _, mean, var = batch_norm_train_forward(x, np.ones(3), np.zeros(3), eps=1e-3)
    rm, rv = np.full(3, 0.5), np.full(3, 2.0)
    update_running_stats(rm, rv, mean, var, 120, momentum=0.1, running_var_kind=kind)
    rows = x.reshape(3, -1)
    np.testing.assert_allclose(rm, 0.9 * 0.5 + 0.1 * rows.mean(axis=1), rtol=1e-13)
    np.testing.assert_allclose(rv, 0.9 * 2.0 + 0.1 * rows.var(axis=1) * factor, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["biased", "unbiased"])
@pytest.mark.parametrize("momentum", [0.1, 0.01, 1 / 3])
def test_running_update_rounds_as_the_numpy_expressions(dtype, kind, momentum):
    """One group in one process goes through one kernel call: the bits of r = r * (1 - m) + m * stat with
    every constant and every operation in the dtype (NumPy's in-place updates), written out here."""
    rng = np.random.default_rng(7)
    rm, rv = rng.standard_normal(40).astype(dtype), rng.random(40).astype(dtype) + 0.5
    mean, var = rng.standard_normal(40).astype(dtype) * 3, rng.random(40).astype(dtype) * 4
    t, n = np.dtype(dtype).type, 37
    stat_var = var * t(n / (n - 1)) if kind == "unbiased" else var
    want_m = rm * t(1.0 - momentum) + t(momentum) * mean
    want_v = rv * t(1.0 - momentum) + t(momentum) * stat_var
    update_running_stats(rm, rv, mean, var, n, momentum=momentum, running_var_kind=kind)
    assert rm.dtype == rv.dtype == dtype
    assert rm.tobytes() == want_m.tobytes() and rv.tobytes() == want_v.tobytes()


def test_unbiased_running_var_needs_two_values():
    with pytest.raises(ValueError, match="more than one value"):
        update_running_stats(np.zeros(1), np.ones(1), np.zeros(1), np.zeros(1), 1, momentum=0.1,
                             running_var_kind="unbiased")


def test_eval_forward_uses_running_stats():
    x, gamma, beta = _x()
    rm, rv = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 1.0])
    y = batch_norm_eval_forward(x, gamma, beta, rm, rv, eps=1e-3)
    b = lambda v: v[:, None, None, None]  # noqa: E731
    np.testing.assert_allclose(y, (x - b(rm)) / np.sqrt(b(rv) + 1e-3) * b(gamma) + b(beta), rtol=1e-12)


def test_train_backward_gradcheck():
    x, gamma, beta = _x((4, 3, 5, 3))

    def f(a):
        return batch_norm_train_forward(a["x"], a["gamma"], a["beta"], eps=1e-3)[0]

    def analytic(a, r):
        _, cache, _, _ = batch_norm_train_forward(a["x"], a["gamma"], a["beta"], eps=1e-3)
        dx, dg, db = batch_norm_backward(r, cache)
        return {"x": dx, "gamma": dg, "beta": db}

    gradcheck(f, {"x": x, "gamma": gamma, "beta": beta}, analytic, rtol=1e-7)


def test_eval_backward_gradcheck():
    x, gamma, beta = _x((2, 3, 4, 3))
    rm, rv = np.array([0.3, -1.0]), np.array([2.0, 0.5])

    def f(a):
        return batch_norm_eval_forward(a["x"], a["gamma"], a["beta"], rm, rv, eps=1e-3)

    def analytic(a, r):
        dx, dg, db = batch_norm_eval_backward(r, a["x"], a["gamma"], rm, rv, eps=1e-3)
        return {"x": dx, "gamma": dg, "beta": db}

    gradcheck(f, {"x": x, "gamma": gamma, "beta": beta}, analytic, rtol=1e-7)


# ---- statistics groups -----------------------------------------------------------------------
def test_grouped_forward_normalises_each_group_on_its_own():
    x, gamma, beta = _x((3, 6, 4, 5))  # C=3, N=6: three groups of two samples
    y, _, mean, var = batch_norm_train_forward(x, gamma, beta, eps=1e-3, groups=3)
    assert mean.shape == var.shape == (3, 3)
    b = lambda v: v[:, None, None, None]  # noqa: E731
    for j in range(3):
        part = x[:, 2 * j:2 * j + 2]
        rows = part.reshape(3, -1)  # 2*4*5 = 40 values per channel
        np.testing.assert_allclose(mean[:, j], rows.sum(axis=1) / 40, rtol=1e-13)
        np.testing.assert_allclose(var[:, j], ((rows - rows.mean(axis=1)[:, None]) ** 2).sum(axis=1) / 40,
                                   rtol=1e-12)
        ref = (part - b(mean[:, j])) / np.sqrt(b(var[:, j]) + 1e-3) * b(gamma) + b(beta)
        np.testing.assert_allclose(y[:, 2 * j:2 * j + 2], ref, rtol=1e-12, atol=1e-13)


def test_grouped_backward_gradcheck():
    x, gamma, beta = _x((3, 4, 3, 5))

    def f(a):
        return batch_norm_train_forward(a["x"], a["gamma"], a["beta"], eps=1e-3, groups=2)[0]

    def analytic(a, r):
        _, cache, _, _ = batch_norm_train_forward(a["x"], a["gamma"], a["beta"], eps=1e-3, groups=2)
        dx, dg, db = batch_norm_backward(r, cache)
        return {"x": dx, "gamma": dg, "beta": db}

    gradcheck(f, {"x": x, "gamma": gamma, "beta": beta}, analytic, rtol=1e-7)


@pytest.mark.parametrize("kind", ["biased", "unbiased"])
def test_grouped_running_update_rule(kind):
    """Convert each group's variance with its own n, average over groups, one momentum step."""
    x, _, _ = _x((2, 4, 3, 5))  # two groups of 2 samples: n_g = 2*3*5 = 30
    _, _, mean, var = batch_norm_train_forward(x, np.ones(2), np.zeros(2), eps=1e-3, groups=2)
    rm, rv = np.full(2, 0.5), np.full(2, 2.0)
    update_running_stats(rm, rv, mean, var, 30, momentum=0.25, running_var_kind=kind)
    groups = [x[:, :2].reshape(2, -1), x[:, 2:].reshape(2, -1)]
    ddof = 1 if kind == "unbiased" else 0
    np.testing.assert_allclose(rm, 0.75 * 0.5 + 0.25 * np.mean([g.mean(axis=1) for g in groups], axis=0),
                               rtol=1e-13)
    np.testing.assert_allclose(rv, 0.75 * 2.0 + 0.25 * np.mean([g.var(axis=1, ddof=ddof) for g in groups], axis=0),
                               rtol=1e-13)


@pytest.mark.parametrize("groups", [0, 3, 5])
def test_groups_must_divide_the_batch(groups):
    with pytest.raises(ValueError, match="groups must be a positive int dividing the batch size N = 4"):
        batch_norm_train_forward(np.zeros((2, 4, 3, 3)), np.ones(2), np.zeros(2), eps=1e-3, groups=groups)
