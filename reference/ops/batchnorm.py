"""Batch normalisation over (N, H, W) per channel, on CNHW activations.

Training normalises with the batch mean and the *biased* batch variance (divide by n,
n = N*H*W), as TF and PyTorch both do; the running statistics are updated separately by
`update_running_stats` in the PyTorch momentum convention (`m` = weight of the new batch
statistic), folding in either the biased variance (TF/Keras) or the unbiased one
(PyTorch, `v * n / (n - 1)`). Eval uses the running statistics and needs no cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels.elementwise import bn_backward_dx_kernel, bn_normalize_kernel


@dataclass
class BatchNormCache:
    xhat: np.ndarray  # (C, n) normalised input
    inv_std: np.ndarray  # (C,)
    gamma: np.ndarray
    shape: tuple[int, ...]


def _vec(v: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(v, dtype=dtype)


def _rows(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(x.shape[0], -1)


def batch_norm_train_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps: float):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta with batch stats.

    Returns (y, cache, mean, var) with `var` the biased batch variance, both (C,).
    """
    x2 = _rows(x)
    mean = x2.mean(axis=1)
    centred = x2 - mean[:, None]
    var = np.einsum("cm,cm->c", centred, centred) / x2.shape[1]
    inv_std = 1.0 / np.sqrt(var + eps)
    inv_std = inv_std.astype(x.dtype)
    xhat = centred  # normalised in place: the centred buffer is not needed any more
    y = np.empty_like(xhat)
    bn_normalize_kernel(xhat, inv_std, _vec(gamma, x.dtype), _vec(beta, x.dtype), y)
    return y.reshape(x.shape), BatchNormCache(xhat, inv_std, gamma, x.shape), mean, var


def batch_norm_backward(dy: np.ndarray, cache: BatchNormCache):
    """(dx, dgamma, dbeta) for the training forward (statistics depend on x)."""
    dy2 = _rows(dy)
    n = dy2.shape[1]
    dbeta = dy2.sum(axis=1)
    dgamma = np.einsum("cm,cm->c", dy2, cache.xhat)
    # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))
    dt = dy2.dtype
    dx = np.empty_like(dy2)
    bn_backward_dx_kernel(dy2, cache.xhat, _vec(cache.gamma * cache.inv_std, dt), _vec(dbeta / n, dt),
                          _vec(dgamma / n, dt), dx)
    return dx.reshape(cache.shape), dgamma, dbeta


def batch_norm_eval_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                            running_var: np.ndarray, *, eps: float) -> np.ndarray:
    """Eval-mode BN with running statistics (an affine map per channel)."""
    scale = gamma / np.sqrt(running_var + eps)
    shift = beta - running_mean * scale
    x2 = _rows(x)
    return (x2 * scale[:, None] + shift[:, None]).reshape(x.shape)


def batch_norm_eval_backward(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, running_mean: np.ndarray,
                             running_var: np.ndarray, *, eps: float):
    """(dx, dgamma, dbeta) of eval-mode BN (statistics are constants)."""
    inv_std = 1.0 / np.sqrt(running_var + eps)
    dy2, x2 = _rows(dy), _rows(x)
    xhat = (x2 - running_mean[:, None]) * inv_std[:, None]
    return ((dy2 * (gamma * inv_std)[:, None]).reshape(x.shape), np.einsum("cm,cm->c", dy2, xhat),
            dy2.sum(axis=1))


def update_running_stats(running_mean: np.ndarray, running_var: np.ndarray, mean: np.ndarray, var: np.ndarray,
                         n: int, *, momentum: float, running_var_kind: str) -> None:
    """In place: r = (1 - m) * r + m * batch; `var` is biased, converted when 'unbiased'."""
    if running_var_kind == "unbiased":
        if n < 2:
            raise ValueError("batch norm: the unbiased running variance needs more than one value per channel "
                             f"(N*H*W = {n})")
        var = var * (n / (n - 1))
    elif running_var_kind != "biased":
        raise ValueError(f"batch norm: unknown running_var convention {running_var_kind!r}")
    running_mean *= 1.0 - momentum
    running_mean += momentum * mean
    running_var *= 1.0 - momentum
    running_var += momentum * var
