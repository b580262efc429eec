"""Global average pool: CNHW (C, N, H, W) -> features (N, C)."""

from __future__ import annotations

import numpy as np


def global_avg_pool_forward(x: np.ndarray):
    c, n, h, w = x.shape
    return np.ascontiguousarray(x.reshape(c, n, h * w).mean(axis=2).T), x.shape


def global_avg_pool_backward(df: np.ndarray, shape) -> np.ndarray:
    c, n, h, w = shape
    dx = np.empty(shape, dtype=df.dtype)  # a real, writable array (kernels reject read-only views)
    dx[...] = (df.T / (h * w)).astype(df.dtype)[:, :, None, None]
    return dx
