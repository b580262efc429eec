"""Fully connected layer: y = x @ W.T + b with W (out, in) as in the canonical table."""

from __future__ import annotations

import numpy as np


def dense_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray):
    return x @ w.T + b, (x, w)


def dense_backward(dy: np.ndarray, cache):
    """(dx, dw, db)."""
    x, w = cache
    return dy @ w, dy.T @ x, dy.sum(axis=0)
