"""Fused batch norm + SiLU (ops/bn_silu.py, kernels/network/bn_silu.py) gives the bits of the two ops apart:
`batch_norm_train_forward` then `silu_forward`, and `silu_backward` then `batch_norm_backward`, for statistics
groups inside a process and for groups spanning processes; in eval mode `batch_norm_eval_forward` then
`silu_forward`; and the model gives the same step and the same eval forward either way."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import effv2_reference.units as units_module
from effv2_reference import ops
from effv2_reference.model import ReferenceModel


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _inputs(rng, c, n, h, w, dtype):
    # channels with their own offsets and scales, as a conv's output has; a few values far out (the exp clamp)
    x = rng.standard_normal((c, n, h, w)) * rng.uniform(0.1, 30, (c, 1, 1, 1)) + rng.uniform(-40, 40, (c, 1, 1, 1))
    gamma, beta = rng.uniform(-2, 2, c), rng.uniform(-3, 3, c)
    dy = rng.standard_normal((c, n, h, w))
    return (x.astype(dtype), gamma.astype(dtype), beta.astype(dtype), dy.astype(dtype))


def _apart(x, gamma, beta, dy, eps, groups=1, sync=None):
    y, cache, mean, var = ops.batch_norm_train_forward(x, gamma, beta, eps=eps, groups=groups, sync=sync)
    out, act = ops.activation_forward("silu", y)
    dx, dgamma, dbeta = ops.batch_norm_backward(ops.activation_backward("silu", dy, act), cache)
    return out, mean, var, dx, dgamma, dbeta


def _fused(x, gamma, beta, dy, eps, groups=1, sync=None):
    out, cache, mean, var = ops.batch_norm_silu_train_forward(x, gamma, beta, eps=eps, groups=groups, sync=sync)
    dx, dgamma, dbeta = ops.batch_norm_silu_backward(dy, cache)
    return out, mean, var, dx, dgamma, dbeta


@settings(deadline=None)
@given(c=st.integers(1, 24), per_group=st.integers(1, 4), groups=st.sampled_from([1, 2, 3]), h=st.integers(1, 9),
       w=st.integers(1, 9), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2 ** 32 - 1),
       eps=st.sampled_from([1e-3, 1e-5]))
def test_fused_equals_the_two_ops_bit_for_bit(c, per_group, groups, h, w, dtype, seed, eps):
    x, gamma, beta, dy = _inputs(np.random.default_rng(seed), c, per_group * groups, h, w, dtype)
    apart, fused = _apart(x, gamma, beta, dy, eps, groups), _fused(x, gamma, beta, dy, eps, groups)
    names = ("out", "mean", "var", "dx", "dgamma", "dbeta")
    assert [n for n, a, b in zip(names, apart, fused) if not _same(a, b)] == []


def test_fused_values_are_silu_of_batch_norm():
    """Against the definitions in float64 (not the code it replaces): silu(gamma * (x - mean) / sqrt(var + eps)
    + beta), and the gradient by central differences of sum(out * dy)."""
    rng = np.random.default_rng(3)
    x, gamma, beta, dy = _inputs(rng, 3, 4, 3, 2, np.float64)
    eps = 1e-3

    def forward(v):
        mean = v.mean(axis=(1, 2, 3), keepdims=True)
        var = ((v - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
        y = (v - mean) / np.sqrt(var + eps) * gamma[:, None, None, None] + beta[:, None, None, None]
        return y / (1 + np.exp(-y))

    out, _, _, dx, _, _ = _fused(x, gamma, beta, dy, eps)
    np.testing.assert_allclose(out, forward(x), rtol=1e-13, atol=1e-13)
    numeric = np.empty_like(x)
    step = 1e-6
    for i in np.ndindex(x.shape):
        hi, lo = x.copy(), x.copy()
        hi[i] += step
        lo[i] -= step
        numeric[i] = ((forward(hi) - forward(lo)) * dy).sum() / (2 * step)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-7)


class _ThreadGroup:
    """BatchNormSync for `span` threads standing in for processes: each exchange is a barrier-bounded gather."""

    def __init__(self, span: int):
        self.span, self.barrier, self.slots = span, threading.Barrier(span, timeout=60), [None] * span

    def member(self, rank: int) -> ops.BatchNormSync:
        def gather(values):
            self.slots[rank] = np.array(values)
            self.barrier.wait()
            parts = np.stack(self.slots)
            self.barrier.wait()  # every thread has read this exchange before the next one writes
            return parts

        return ops.BatchNormSync(group_sum=lambda v: _rank_order_sum(gather(v)), group_gather=gather,
                                 span=self.span)


def _rank_order_sum(parts):
    out = parts[0].copy()
    for p in parts[1:]:
        out += p
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("span", [2, 3])
def test_fused_equals_the_two_ops_for_a_group_spanning_processes(dtype, span):
    rng = np.random.default_rng(span)
    x, gamma, beta, dy = _inputs(rng, 10, 4 * span, 5, 3, dtype)
    results: dict = {}

    def run(rank):
        rows = slice(4 * rank, 4 * rank + 4)
        for name, f in (("apart", _apart), ("fused", _fused)):
            sync = group[name].member(rank)
            results[name, rank] = f(np.ascontiguousarray(x[:, rows]), gamma, beta,
                                    np.ascontiguousarray(dy[:, rows]), 1e-3, sync=sync)

    group = {"apart": _ThreadGroup(span), "fused": _ThreadGroup(span)}
    threads = [threading.Thread(target=run, args=(r,)) for r in range(span)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2 * span
    for rank in range(span):
        assert all(_same(a, b) for a, b in zip(results["apart", rank], results["fused", rank])), rank
    # the group's statistics are those of all its rows at once (one process holding them all)
    whole = _fused(x, gamma, beta, dy, 1e-3)
    np.testing.assert_allclose(results["fused", 0][1], whole[1], rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype,size,group", [("float32", 16, None), ("float32", 13, 2), ("float64", 11, 4)])
def test_model_step_is_the_same_fused_or_not(monkeypatch, dtype, size, group):
    def step(fused: bool):
        monkeypatch.setattr(units_module, "FUSE_BN_SILU", fused)
        m = ReferenceModel("efficientnetv2-nano", dtype=dtype, seed=0)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((8, 3, size, size)).astype(dtype)
        logits = m.forward(x, training=True, bn_group_size=group)
        kinds = {type(cache.bn).__name__ for kind, unit, cache in m._tape if kind == "unit" and unit.kind == "conv_bn"}
        grads, dx = m.backward(rng.standard_normal(logits.shape).astype(dtype), return_input_grad=True)
        return kinds, logits, dx, grads, m.buffers

    fused, apart = step(True), step(False)
    assert fused[0] == {"BatchNormSiluCache", "BatchNormCache"} and apart[0] == {"BatchNormCache"}
    assert _same(fused[1], apart[1]) and _same(fused[2], apart[2])
    assert all(_same(fused[3][k], apart[3][k]) for k in apart[3])
    assert all(_same(fused[4][k], apart[4][k]) for k in apart[4])  # running statistics


def _running_stats(rng, c, dtype):
    return rng.uniform(-30, 30, c).astype(dtype), rng.uniform(1e-4, 400, c).astype(dtype)


# rows of 1 to 5000 values: shorter than the kernel's block of 2048, one block and a part, several blocks
@settings(deadline=None)
@given(c=st.integers(1, 9), n=st.integers(1, 5), h=st.integers(1, 33), w=st.integers(1, 31),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2 ** 32 - 1),
       eps=st.sampled_from([1e-3, 1e-5]))
def test_fused_eval_equals_the_two_ops_bit_for_bit(c, n, h, w, dtype, seed, eps):
    rng = np.random.default_rng(seed)
    x, gamma, beta, _ = _inputs(rng, c, n, h, w, dtype)
    rm, rv = _running_stats(rng, c, dtype)
    apart, _ = ops.activation_forward("silu", ops.batch_norm_eval_forward(x, gamma, beta, rm, rv, eps=eps))
    assert _same(ops.batch_norm_silu_eval_forward(x, gamma, beta, rm, rv, eps=eps), apart)


def test_fused_eval_takes_an_empty_batch_as_the_two_ops_do():
    x, v = np.zeros((3, 0, 4, 4), np.float32), np.ones(3, np.float32)
    apart, _ = ops.activation_forward("silu", ops.batch_norm_eval_forward(x, v, v, v, v, eps=1e-3))
    assert _same(ops.batch_norm_silu_eval_forward(x, v, v, v, v, eps=1e-3), apart)


def test_fused_eval_values_are_silu_of_the_running_statistics():
    """Against the definition in float64 with libm's exp: silu(gamma * (x - mean) / sqrt(var + eps) + beta)."""
    rng = np.random.default_rng(5)
    x, gamma, beta, _ = _inputs(rng, 4, 3, 50, 30, np.float64)  # 4500 values a row: three blocks
    rm, rv = _running_stats(rng, 4, np.float64)
    c = (slice(None), None, None, None)
    y = gamma[c] * (x - rm[c]) / np.sqrt(rv[c] + 1e-3) + beta[c]
    # folded into x * scale + shift, y rounds differently: a few ulp of the terms' size, which SiLU (slope <= 1.1)
    # passes on; the exp itself is within a few ulp of libm's (test_kernels_silu.py)
    scale = gamma / np.sqrt(rv + 1e-3)
    terms = np.abs(x * scale[c]) + np.abs((beta - rm * scale)[c])
    np.testing.assert_allclose(ops.batch_norm_silu_eval_forward(x, gamma, beta, rm, rv, eps=1e-3),
                               y / (1.0 + np.exp(-y)), rtol=1e-14, atol=8 * np.finfo(np.float64).eps * terms.max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_eval_forward_is_the_same_fused_or_not(monkeypatch, dtype):
    def forward(fused: bool):
        monkeypatch.setattr(units_module, "FUSE_BN_SILU", fused)
        m = ReferenceModel("efficientnetv2-nano", dtype=dtype, seed=0)
        rng = np.random.default_rng(2)
        for k in [k for k in m.buffers if k.endswith("running_mean")]:  # running statistics that do something
            m.buffers[k][...] = rng.uniform(-1, 1, m.buffers[k].shape)
            m.buffers[k.replace("mean", "var")][...] = rng.uniform(0.2, 3, m.buffers[k].shape)
        x = rng.standard_normal((4, 3, 64, 64)).astype(dtype)
        calls = []
        fused_op = ops.batch_norm_silu_eval_forward
        monkeypatch.setattr(ops, "batch_norm_silu_eval_forward", lambda *a, **k: calls.append(1) or fused_op(*a, **k))
        logits = m.forward(x)
        monkeypatch.setattr(ops, "batch_norm_silu_eval_forward", fused_op)
        m.forward(x[:2], training=True)
        silu_units = sum(1 for kind, unit, _ in m._tape if kind == "unit" and unit.kind == "conv_bn"
                         and unit.activation == "silu")
        return len(calls), silu_units, logits

    (fused_calls, silu_units, fused), (apart_calls, _, apart) = forward(True), forward(False)
    assert silu_units >= 10 and fused_calls == silu_units and apart_calls == 0
    assert _same(fused, apart)


def test_eval_forward_then_backward_keeps_the_unfused_gradients():
    """An eval forward fused (no tape), then backward: it re-runs the forward with a tape (the unfused ops);
    the input gradient matches central differences of the fused forward's logits."""
    m = ReferenceModel("efficientnetv2-nano", dtype="float64", seed=0)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 16, 16))
    v = rng.standard_normal(m.forward(x).shape)
    _, dx = m.backward(v, return_input_grad=True)
    d = rng.standard_normal(x.shape)
    e = 1e-5
    numeric = (np.sum(m.forward(x + e * d) * v) - np.sum(m.forward(x - e * d) * v)) / (2 * e)
    np.testing.assert_allclose(np.sum(dx * d), numeric, rtol=1e-6)


def test_fused_refuses_other_dtypes_and_spanning_groups():
    x = np.zeros((2, 2, 1, 1), np.float16)
    with pytest.raises(ValueError, match="float32 or float64"):
        ops.batch_norm_silu_train_forward(x, np.ones(2), np.zeros(2), eps=1e-3)
    with pytest.raises(ValueError, match="float32 or float64"):
        ops.batch_norm_silu_eval_forward(x, np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), eps=1e-3)
    sync = _ThreadGroup(1).member(0)
    with pytest.raises(ValueError, match="groups=1"):
        ops.batch_norm_silu_train_forward(np.zeros((2, 4, 1, 1)), np.ones(2), np.zeros(2), eps=1e-3, groups=2,
                                          sync=sync)


_SILU_TOL = {np.float64: 2e-15, np.float32: 1.2e-6}  # the SiLU kernel's own exp against NumPy's (test_kernels_silu)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,m", [(1, 1), (3, 17), (4, 2049), (2, 4100)])
def test_fused_kernels_against_their_numpy_twins(dtype, rows, m):
    """The four kernels of kernels/network/bn_silu.py against their NumPy twins: what BN computes bit for bit,
    the SiLU forward (NumPy's exp in the twin) to a tolerance, and the backward (s given) bit for bit."""
    from effv2_reference.kernels.network.bn_silu import (affine_silu_forward_kernel, affine_silu_forward_naive,
                                                         bn_silu_backward_kernel, bn_silu_backward_naive,
                                                         bn_silu_forward_kernel, bn_silu_forward_naive,
                                                         silu_grad_sums_kernel, silu_grad_sums_naive)
    from effv2_reference.kernels.network.silu import silu_constants

    rng = np.random.default_rng(rows * m)
    x = (rng.standard_normal((rows, m)) * 4 + 1).astype(dtype)
    mean, gamma, beta = rng.standard_normal((3, rows)).astype(dtype)
    inv_std = (rng.random(rows) + 0.5).astype(dtype)
    xhat, s, out = (np.empty((rows, m), dtype) for _ in range(3))
    bn_silu_forward_kernel(x, mean, inv_std, gamma, beta, xhat, s, out, silu_constants(dtype))
    want_xhat, want_s, want_out = bn_silu_forward_naive(x, mean, inv_std, gamma, beta)
    assert xhat.tobytes() == want_xhat.tobytes()
    np.testing.assert_allclose(s, want_s, rtol=4 * _SILU_TOL[dtype], atol=0)
    scale = np.maximum(np.abs(xhat * gamma[:, None] + beta[:, None]), 1)
    assert np.all(np.abs(out - want_out) <= 4 * _SILU_TOL[dtype] * scale)
    evaluated = np.empty((rows, m), dtype)
    affine_silu_forward_kernel(x, inv_std, beta, evaluated, silu_constants(dtype))
    assert np.all(np.abs(evaluated - affine_silu_forward_naive(x, inv_std, beta))
                  <= 4 * _SILU_TOL[dtype] * np.maximum(np.abs(x * inv_std[:, None] + beta[:, None]), 1))

    dy = rng.standard_normal((rows, m)).astype(dtype)
    dx, grow = np.empty((rows, m), dtype), np.empty(m, dtype)
    dbeta, dgamma = np.empty(rows, dtype), np.empty(rows, dtype)
    bn_silu_backward_kernel(dy, xhat, s, gamma, beta, inv_std, dtype(m), grow, dx, dbeta, dgamma)
    want = bn_silu_backward_naive(dy, xhat, s, gamma, beta, inv_std, m)
    assert [a.tobytes() for a in (dx, dbeta, dgamma)] == [a.tobytes() for a in want]
    g, sums = np.empty((rows, m), dtype), np.empty((2, rows), dtype)
    silu_grad_sums_kernel(dy, xhat, s, gamma, beta, g, sums)
    want_g, want_sums = silu_grad_sums_naive(dy, xhat, s, gamma, beta)
    assert g.tobytes() == want_g.tobytes() and sums.tobytes() == want_sums.tobytes()
