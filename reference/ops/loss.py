"""Softmax cross-entropy, mean over the batch, with label smoothing and soft (mixup) targets."""

from __future__ import annotations

import numpy as np

from effv2_train.recipe import soft_targets


def smooth_targets(targets: np.ndarray, num_classes: int, label_smoothing: float = 0.0, dtype=np.float64):
    """Integer labels (N,) or soft targets (N, K) -> (1 - ls) * t + ls / K, as (N, K)."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        if not np.issubdtype(targets.dtype, np.integer):
            raise ValueError("softmax_cross_entropy: 1-D targets must be integer class labels")
        if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {num_classes})")
        t = np.zeros((targets.shape[0], num_classes), dtype=dtype)
        t[np.arange(targets.shape[0]), targets] = 1.0
    elif targets.ndim == 2 and targets.shape[1] == num_classes:
        t = targets.astype(dtype)
    else:
        raise ValueError(f"softmax_cross_entropy: targets must be (N,) labels or (N, {num_classes}), "
                         f"got shape {targets.shape}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"softmax_cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    return soft_targets(t, num_classes, label_smoothing)  # the recipe's definition, shared with every backend


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray, *, label_smoothing: float = 0.0):
    """loss = mean_n -sum_k t[n, k] * log_softmax(logits)[n, k]; returns (loss, dlogits).

    logits (N, K). dlogits = (softmax * sum_k t - t) / N, which is (p - t) / N for targets
    summing to one (the general form keeps it exact for unnormalised soft targets).
    """
    n, k = logits.shape
    t = smooth_targets(targets, k, label_smoothing, logits.dtype)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    z = e.sum(axis=1, keepdims=True)
    log_p = shifted - np.log(z)
    loss = float(-(t * log_p).sum() / n)
    p = e / z
    dlogits = (p * t.sum(axis=1, keepdims=True) - t) / n
    return loss, dlogits.astype(logits.dtype)
