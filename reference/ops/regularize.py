"""Drop path (stochastic depth) and dropout with explicit 0/1 keep masks.

Masks are data, not hidden state: the model draws them from its seeded generator (or
takes them from the caller) and records them, so other backends can replay them.
Both use inverted scaling: kept values are divided by (1 - rate) at train time.
"""

from __future__ import annotations

import numpy as np


def keep_mask(rng: np.random.Generator, shape, rate: float, dtype) -> np.ndarray:
    """Bernoulli(1 - rate) mask of 0.0/1.0 (1 = keep)."""
    return (rng.random(shape) >= rate).astype(dtype)


def drop_path_forward(branch: np.ndarray, mask: np.ndarray, rate: float):
    """branch (C, N, H, W) * mask[n] / (1 - rate); mask (N,). Returns (y, scale) with scale (N,)."""
    scale = (mask / (1.0 - rate)).astype(branch.dtype)
    return branch * scale[None, :, None, None], scale


def drop_path_backward(dy: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return dy * scale[None, :, None, None]


def dropout_forward(x: np.ndarray, mask: np.ndarray, rate: float):
    """x * mask / (1 - rate), mask of x's shape. Returns (y, scale)."""
    scale = (mask / (1.0 - rate)).astype(x.dtype)
    return x * scale, scale


def dropout_backward(dy: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return dy * scale
