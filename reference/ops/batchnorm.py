"""Batch normalisation over (N, H, W) per channel, on CNHW activations.

Training normalises with the batch mean and the *biased* batch variance (divide by n,
n = N*H*W), as TF and PyTorch both do; the running statistics are updated separately by
`update_running_stats` in the PyTorch momentum convention (`m` = weight of the new batch
statistic), folding in either the biased variance (TF/Keras) or the unbiased one
(PyTorch, `v * n / (n - 1)`). Eval uses the running statistics and needs no cache.

Statistics groups (`groups=k`): the batch axis is cut into k contiguous groups of N/k
samples and each group is normalised with its own mean and biased variance over its
n_g = (N/k)*H*W values per channel (what plain DDP, TPU per-core BN and "ghost" BN
compute). The backward is exact per group. Running statistics rule, the same on every
replica: each group's variance is converted by the running-variance convention with its
own n_g (unbiased: var_g * n_g / (n_g - 1)), then the group means and the converted
group variances are each averaged over the groups (one all-reduce-mean across replicas),
then one momentum update r = (1 - m) r + m * average. With k = 1 this is the plain rule.

Across processes (`BatchNormSync`, data-parallel training: replicas.py): a group may span the
rows of `span` processes. Forward, one exchange: each process sends its rows' mean and centred sum
of squares M2 per channel, and every process combines them in rank order (Chan et al.: M2 = sum of
the M2s + rows * sum of (mean_p - mean)^2, no cancellation); backward, `group_sum` adds the two
gradient sums over the processes; the parameter gradients
returned stay this process's share (the trainer sums them over processes); `replica_mean` averages
the per-process statistics before the momentum update, so every replica's running statistics are
the same rule over all groups of the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..kernels.network.elementwise import (affine_rows_kernel, bn_backward_dx_kernel, bn_center_normalize_kernel,
                                   bn_grad_sums_kernel, bn_moments_kernel, bn_span_backward_dx_kernel,
                                   bn_span_moments_kernel, running_stats_kernel)
from ..kernels.runtime.pool import parallel_for


@dataclass(frozen=True)
class BatchNormSync:
    """How train-mode BN reaches the other processes of a data-parallel run (None fields: it does not)."""

    group_sum: Callable[[np.ndarray], np.ndarray] | None = None  # sum over the processes sharing this BN group
    group_gather: Callable[[np.ndarray], np.ndarray] | None = None  # their values stacked, (span, ...)
    span: int = 1  # how many processes share it (their rows make one group)
    replica_mean: Callable[[np.ndarray], np.ndarray] | None = None  # mean over every process (running stats)


@dataclass
class BatchNormCache:
    xhat: np.ndarray  # (C * groups, n_g) normalised input, one row per (channel, group)
    inv_std: np.ndarray  # (C * groups,)
    gamma: np.ndarray  # (C,)
    shape: tuple[int, ...]
    groups: int = 1
    sync: BatchNormSync | None = None  # a group spanning processes (sync.group_sum set)


def _vec(v: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(v, dtype=dtype)


def _rows(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(x.shape[0], -1)


def _group_rows(x: np.ndarray, groups: int) -> np.ndarray:
    """(C * groups, N/groups * H * W): row c * groups + j is channel c of the j-th group of samples.

    A reshape of the contiguous CNHW array (N is the second axis), so no copy; groups=1 is `_rows`.
    """
    if not isinstance(groups, (int, np.integer)) or groups < 1 or x.shape[1] % groups:
        raise ValueError(f"batch norm: groups must be a positive int dividing the batch size N = {x.shape[1]} "
                         f"(got {groups!r})")
    return np.ascontiguousarray(x).reshape(x.shape[0] * groups, -1)


def _per_row(v: np.ndarray, groups: int) -> np.ndarray:
    """A per-channel vector repeated for each group row (v itself for one group, to keep that path unchanged)."""
    return np.repeat(v, groups) if groups > 1 else v


def _sum_groups(v: np.ndarray, groups: int) -> np.ndarray:
    """Per-row sums (C * groups,) -> per-channel sums (C,)."""
    return v.reshape(-1, groups).sum(axis=1) if groups > 1 else v


def train_normalise(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps: float, groups: int,
                    sync: BatchNormSync | None, outputs: int, kernel):
    """What every train-mode BN shares: x as rows (one per channel and statistics group, or per channel
    when this process's rows are part of a group spanning processes), the rows' batch statistics, then
    `kernel(x_rows, mean, inv_std, gamma_rows, beta_rows, *outs)` on pieces of rows into `outputs` fresh
    arrays shaped like the rows (the kernel centres, normalises and applies gamma and beta: plain BN, or
    BN + SiLU). Returns (outs, mean, var, inv_std, gamma_rows, beta_rows, spanning); mean and var are
    (C,), or (C, k) for k groups. x: float32 or float64 CNHW."""
    spanning = sync is not None and sync.group_sum is not None
    if spanning and groups != 1:
        raise ValueError("batch norm: a group spanning processes holds all of this process's rows (groups=1)")
    x2 = _rows(x) if spanning else _group_rows(x, groups)
    rows, m = x2.shape
    dt = x2.dtype
    g_rows, b_rows = _vec(_per_row(gamma, groups), dt), _vec(_per_row(beta, groups), dt)
    outs = [np.empty_like(x2) for _ in range(outputs)]

    def normalise(lo, hi):
        kernel(x2[lo:hi], mean[lo:hi], inv_std[lo:hi], g_rows[lo:hi], b_rows[lo:hi], *(o[lo:hi] for o in outs))

    if spanning:
        mean, var, inv_std = span_statistics(x2, eps, sync)
        parallel_for(normalise, rows, m)
    else:
        mean, var, inv_std = np.empty(rows, dt), np.empty(rows, dt), np.empty(rows, dt)

        def part(lo, hi):  # statistics are per row: each piece's rows are complete
            bn_moments_kernel(x2[lo:hi], mean[lo:hi], var[lo:hi])
            inv_std[lo:hi] = 1.0 / np.sqrt(var[lo:hi] + eps)
            normalise(lo, hi)

        parallel_for(part, rows, m)
        if groups > 1:
            mean, var = mean.reshape(-1, groups), var.reshape(-1, groups)
    return outs, mean, var, inv_std, g_rows, b_rows, spanning


def batch_norm_train_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps: float, groups: int = 1,
                             sync: BatchNormSync | None = None):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta with batch stats (per group of samples).

    Returns (y, cache, mean, var) with `var` the biased batch variance, both (C,); with
    groups=k > 1 (k contiguous groups of N/k samples, see the module docstring) both are (C, k).
    With `sync.group_sum`, this process's rows are part of one group spanning `sync.span` processes.
    """
    (xhat, y), mean, var, inv_std, _, _, spanning = train_normalise(
        x, gamma, beta, eps=eps, groups=groups, sync=sync, outputs=2, kernel=bn_center_normalize_kernel)
    cache = BatchNormCache(xhat, inv_std, gamma, x.shape, groups, sync if spanning else None)
    return y.reshape(x.shape), cache, mean, var


def span_statistics(x2: np.ndarray, eps: float, sync: BatchNormSync):
    """(mean, var, inv_std) per channel of a group spanning processes, from this process's rows x2 (C, m)
    and the others' (one exchange of means and centred sums of squares, combined in rank order)."""
    dt, (rows, m) = x2.dtype, x2.shape  # float32 or float64: the oracle's dtypes
    own = np.empty((2, rows), dt)  # this process's means and variances, sent as means and centred sums of squares
    bn_moments_kernel(x2, own[0], own[1])
    own[1] *= m
    parts = sync.group_gather(own)  # (span, 2, C)
    t = dt.type
    mean, var, inv_std = np.empty(rows, dt), np.empty(rows, dt), np.empty(rows, dt)
    bn_span_moments_kernel(parts, t(sync.span), t(m), t(m * sync.span), t(eps), mean, var, inv_std)
    return mean, var, inv_std


def batch_norm_backward(dy: np.ndarray, cache: BatchNormCache):
    """(dx, dgamma, dbeta) for the training forward (statistics depend on x, group by group).

    For a group spanning processes, dx uses the group's gradient sums; dgamma and dbeta are this
    process's share of the parameter gradients."""
    if cache.sync is not None:
        return _spanning_backward(dy, cache)
    k = cache.groups
    dy2 = _group_rows(dy, k)
    rows, n = dy2.shape
    dt = dy2.dtype
    dbeta, dgamma = np.empty(rows, dt), np.empty(rows, dt)
    scale = _vec(_per_row(cache.gamma, k) * cache.inv_std, dt)
    dx = np.empty_like(dy2)

    def part(lo, hi):
        # per row (channel, group): dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))
        d, xh = dy2[lo:hi], cache.xhat[lo:hi]
        bn_grad_sums_kernel(d, xh, dbeta[lo:hi], dgamma[lo:hi])
        bn_backward_dx_kernel(d, xh, scale[lo:hi], _vec(dbeta[lo:hi] / n, dt), _vec(dgamma[lo:hi] / n, dt),
                              dx[lo:hi])

    parallel_for(part, rows, n)
    return dx.reshape(cache.shape), _sum_groups(dgamma, k), _sum_groups(dbeta, k)


def _spanning_backward(dy: np.ndarray, cache: BatchNormCache):
    d = _rows(dy)
    dt, n = d.dtype, d.shape[1] * cache.sync.span
    own = np.empty((2, d.shape[0]), dt)  # this process's sums of dy and dy * xhat
    dbeta, dgamma = own
    bn_grad_sums_kernel(d, cache.xhat, dbeta, dgamma)
    totals = cache.sync.group_sum(own)
    dx = np.empty_like(d)
    bn_span_backward_dx_kernel(d, cache.xhat, _vec(cache.gamma, dt), cache.inv_std, totals, dt.type(n), dx)
    return dx.reshape(cache.shape), dgamma, dbeta


def eval_affine(gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray, *,
                eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per channel: eval-mode BN is x * scale + shift."""
    scale = gamma / np.sqrt(running_var + eps)
    return scale, beta - running_mean * scale


def batch_norm_eval_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                            running_var: np.ndarray, *, eps: float) -> np.ndarray:
    """Eval-mode BN with running statistics (an affine map per channel)."""
    scale, shift = eval_affine(gamma, beta, running_mean, running_var, eps=eps)
    x2 = _rows(x)
    if x2.dtype not in (np.float32, np.float64):
        return (x2 * scale[:, None] + shift[:, None]).reshape(x.shape)
    y = np.empty_like(x2)
    scale, shift = _vec(scale, x2.dtype), _vec(shift, x2.dtype)
    # one pass, split by channels over the pool (15% of a V2-S eval forward as two serial NumPy passes)
    parallel_for(lambda lo, hi: affine_rows_kernel(x2[lo:hi], scale[lo:hi], shift[lo:hi], y[lo:hi]), x2.shape[0],
                 x2.shape[1])
    return y.reshape(x.shape)


def batch_norm_eval_backward(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, running_mean: np.ndarray,
                             running_var: np.ndarray, *, eps: float):
    """(dx, dgamma, dbeta) of eval-mode BN (statistics are constants)."""
    inv_std = 1.0 / np.sqrt(running_var + eps)
    dy2, x2 = _rows(dy), _rows(x)
    xhat = (x2 - running_mean[:, None]) * inv_std[:, None]
    return ((dy2 * (gamma * inv_std)[:, None]).reshape(x.shape), np.einsum("cm,cm->c", dy2, xhat),
            dy2.sum(axis=1))


def update_running_stats(running_mean: np.ndarray, running_var: np.ndarray, mean: np.ndarray, var: np.ndarray,
                         n: int, *, momentum: float, running_var_kind: str,
                         replica_mean: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
    """In place: r = (1 - m) * r + m * batch; `var` is biased, converted when 'unbiased'.

    mean, var: (C,) for one statistics group of n values per channel, or (C, k) for k groups
    of n values each: each group's variance is converted with its own n, then the means and
    the converted variances are averaged over the groups before the one momentum update
    (and over the processes with `replica_mean`, each holding as many groups).
    """
    if running_var_kind == "unbiased":
        if n < 2:
            raise ValueError("batch norm: the unbiased running variance needs more than one value per channel "
                             f"and statistics group (N*H*W per group = {n})")
        factor = n / (n - 1)
    elif running_var_kind == "biased":
        factor = 1.0
    else:
        raise ValueError(f"batch norm: unknown running_var convention {running_var_kind!r}")
    dt = running_mean.dtype
    one_call = (np.ndim(mean) == 1 and replica_mean is None and dt in (np.float32, np.float64)
                and all(isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous
                        for a in (running_mean, running_var, mean, var)))
    if one_call:  # the common case (one group, one process): the updates below in one kernel call
        t = dt.type
        running_stats_kernel(running_mean, running_var, mean, var, t(1.0 - momentum), t(momentum), t(factor))
        return
    if factor != 1.0:
        var = var * factor
    if np.ndim(mean) == 2:
        mean, var = mean.mean(axis=1), var.mean(axis=1)
    if replica_mean is not None:
        mean, var = replica_mean(np.stack([mean, var]))
    running_mean *= 1.0 - momentum
    running_mean += momentum * mean
    running_var *= 1.0 - momentum
    running_var += momentum * var
