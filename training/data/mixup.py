"""Mixup (Zhang et al. 2018) as google/automl applies it, producing soft targets.

Per example: lam ~ Beta(alpha, alpha), lam = max(lam, 1 - lam) (so each mixed example stays
closest to its own label), partner = the batch reversed;
x = lam * x + (1 - lam) * x[::-1], t = lam * onehot(y) + (1 - lam) * onehot(y[::-1]).
alpha = 0 is off: the batch comes back unchanged with one-hot targets. Label smoothing is
applied afterwards by the loss, which is linear in the targets, so the order does not matter.
"""

from __future__ import annotations

import numpy as np


def one_hot(labels: np.ndarray, num_classes: int, dtype=np.float32) -> np.ndarray:
    t = np.zeros((labels.shape[0], num_classes), dtype=dtype)
    t[np.arange(labels.shape[0]), labels] = 1.0
    return t


def mixup(x: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float, rng: np.random.Generator):
    """(mixed x, soft targets (N, K), lam (N,)) for a batch x (N, ...) with integer labels (N,)."""
    t = one_hot(labels, num_classes, x.dtype)
    n = x.shape[0]
    if alpha <= 0.0:
        return x, t, np.ones(n, dtype=x.dtype)
    lam = rng.beta(alpha, alpha, size=n)
    lam = np.maximum(lam, 1.0 - lam).astype(x.dtype)
    lx = lam.reshape((n,) + (1,) * (x.ndim - 1))
    x_mixed = lx * x + (1 - lx) * x[::-1]
    t_mixed = lam[:, None] * t + (1 - lam[:, None]) * t[::-1]
    return x_mixed, t_mixed, lam
