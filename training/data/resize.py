"""Bilinear image resize (forward only), half-pixel centres, no antialiasing.

This is TF2 `tf.image.resize(..., 'bilinear', antialias=False)` and PyTorch
`F.interpolate(mode='bilinear', align_corners=False)`: output pixel centre d maps to
source coordinate (d + 0.5) * in / out - 0.5, clamped at 0; neighbours clamp at the edge.
Separable, so it is two small matrix products over the last two axes.

Pure NumPy and kept under effv2_train.data so that the data pipeline (which the torch and
JAX trainers import too) never imports effv2_reference.ops, whose package imports the Numba kernels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) linear-interpolation weights along one axis (float64, rows sum to 1)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize: sizes must be >= 1 (got {in_size} -> {out_size})")
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def resize_bilinear(x: np.ndarray, size, *, channels_last: bool = False) -> np.ndarray:
    """Resize images to `size` (int or (H, W)).

    x: (..., H, W) (e.g. NCHW or CHW), or (..., H, W, C) with `channels_last=True`.
    Returns x's dtype (integer inputs give float32).
    """
    out_h, out_w = (size, size) if np.isscalar(size) else size
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float32)
    if channels_last:
        x = np.moveaxis(x, -1, -3)
    mh = _weights(x.shape[-2], out_h, dtype)
    mw = _weights(x.shape[-1], out_w, dtype)
    y = mh @ x.astype(dtype, copy=False) @ mw.T
    if channels_last:
        y = np.moveaxis(y, -3, -1)
    return np.ascontiguousarray(y)


@lru_cache(maxsize=64)
def _weights(in_size: int, out_size: int, dtype: np.dtype) -> np.ndarray:
    """interpolation_matrix in `dtype`, read-only: a run resizes between a handful of sizes, millions of times."""
    m = interpolation_matrix(in_size, out_size).astype(dtype)
    m.setflags(write=False)
    return m
