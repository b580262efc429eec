"""Batch norm followed by SiLU as one op (kernels/network/bn_silu.py): the conv units' common tail.

Train mode: the same values, bit for bit, as `batch_norm_train_forward` then `activations.silu_forward`,
and as `silu_backward` then `batch_norm_backward` (statistics groups and groups spanning processes
included: ops/batchnorm.py states the rules); what changes is the number of passes over memory and
of calls. The model uses it for every train-mode BN with batch statistics whose activation is SiLU.

Eval mode (running statistics): `batch_norm_silu_eval_forward` gives the bits of `batch_norm_eval_forward`
then `silu_forward`, without the sigmoid those keep for a backward; the model uses it for an eval forward
that keeps no tape (evaluation, prediction), the unfused pair where a tape is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels.network.bn_silu import (affine_silu_forward_kernel, bn_silu_backward_kernel, bn_silu_forward_kernel,
                               silu_grad_sums_kernel)
from ..kernels.network.elementwise import bn_span_backward_dx_kernel
from ..kernels.runtime.pool import parallel_for
from ..kernels.network.silu import silu_constants
from .batchnorm import BatchNormSync, _group_rows, _rows, _sum_groups, _vec, eval_affine, train_normalise


@dataclass
class BatchNormSiluCache:
    xhat: np.ndarray  # (C * groups, n_g) normalised input, one row per (channel, group)
    s: np.ndarray  # sigmoid of BN's output, rows like xhat
    inv_std: np.ndarray  # (C * groups,)
    gamma: np.ndarray  # (C * groups,) per row, in the dtype
    beta: np.ndarray  # (C * groups,)
    shape: tuple[int, ...]
    groups: int = 1
    sync: BatchNormSync | None = None  # a group spanning processes (sync.group_sum set)


def batch_norm_silu_train_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps: float,
                                  groups: int = 1, sync: BatchNormSync | None = None):
    """silu(batch_norm(x)) with batch statistics: (out, cache, mean, var) as `batch_norm_train_forward`
    returns them (mean and var (C,), or (C, k) for k groups). x: float32 or float64 CNHW."""
    dt = x.dtype
    if dt not in (np.float32, np.float64):
        raise ValueError(f"batch norm + SiLU: float32 or float64 activations, got {dt}")

    consts = silu_constants(dt)

    def kernel(*rows):
        bn_silu_forward_kernel(*rows, consts)

    (xhat, s, out), mean, var, inv_std, g_rows, b_rows, spanning = train_normalise(
        x, gamma, beta, eps=eps, groups=groups, sync=sync, outputs=3, kernel=kernel)
    cache = BatchNormSiluCache(xhat, s, inv_std, g_rows, b_rows, x.shape, groups, sync if spanning else None)
    return out.reshape(x.shape), cache, mean, var


def batch_norm_silu_backward(dy: np.ndarray, cache: BatchNormSiluCache):
    """(dx, dgamma, dbeta) of `batch_norm_silu_train_forward`. For a group spanning processes, dx uses the
    group's gradient sums; dgamma and dbeta are this process's share (as `batch_norm_backward`)."""
    if cache.sync is not None:
        d = _rows(dy)
        dt, n = d.dtype, d.shape[1] * cache.sync.span
        g, own = np.empty_like(d), np.empty((2, d.shape[0]), d.dtype)  # own: this process's two gradient sums
        silu_grad_sums_kernel(d, cache.xhat, cache.s, cache.gamma, cache.beta, g, own)
        totals = cache.sync.group_sum(own)
        dx = np.empty_like(d)
        bn_span_backward_dx_kernel(g, cache.xhat, cache.gamma, cache.inv_std, totals, dt.type(n), dx)
        return dx.reshape(cache.shape), own[1], own[0]
    k = cache.groups
    dy2 = _group_rows(dy, k)
    rows, n = dy2.shape
    dt = dy2.dtype
    dbeta, dgamma, dx = np.empty(rows, dt), np.empty(rows, dt), np.empty_like(dy2)

    def part(lo, hi):  # each row is a whole statistics group: dx follows its sums at once
        bn_silu_backward_kernel(dy2[lo:hi], cache.xhat[lo:hi], cache.s[lo:hi], cache.gamma[lo:hi],
                                cache.beta[lo:hi], cache.inv_std[lo:hi], dt.type(n), np.empty(n, dt), dx[lo:hi],
                                dbeta[lo:hi], dgamma[lo:hi])

    parallel_for(part, rows, n)
    return dx.reshape(cache.shape), _sum_groups(dgamma, k), _sum_groups(dbeta, k)


def batch_norm_silu_eval_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                                 running_var: np.ndarray, *, eps: float) -> np.ndarray:
    """silu(batch_norm(x)) with the running statistics, no cache. x: float32 or float64 CNHW."""
    dt = x.dtype
    if dt not in (np.float32, np.float64):
        raise ValueError(f"batch norm + SiLU: float32 or float64 activations, got {dt}")
    scale, shift = eval_affine(gamma, beta, running_mean, running_var, eps=eps)
    scale, shift = _vec(scale, dt), _vec(shift, dt)
    x2 = _rows(x)
    out = np.empty_like(x2)
    consts = silu_constants(dt)
    parallel_for(lambda lo, hi: affine_silu_forward_kernel(x2[lo:hi], scale[lo:hi], shift[lo:hi], out[lo:hi], consts),
                 x2.shape[0], x2.shape[1])
    return out.reshape(x.shape)
