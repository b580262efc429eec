"""Per-plane reductions and scalings of CNHW activations, viewed as (C * N, H * W) rows.

Squeeze-excite and the head's global pool average each (channel, sample) plane, squeeze-excite
scales each plane by its gate and sums dy * x per plane for the gate's gradient. The planes are
small (2 x 2 to 16 x 16 in the CPU training runs, 7 x 7 to 112 x 112 in an ImageNet forward), so
one kernel pass per call (float64 sums, split over the kernel pool by rows) replaces NumPy's
reductions over a short last axis and their broadcast temporaries.
"""

from __future__ import annotations

import numpy as np

from ..kernels.network.elementwise import affine_rows_kernel, row_dots_kernel, row_means_kernel
from ..kernels.runtime.pool import parallel_for

_FLOATS = (np.float32, np.float64)


def planes(x: np.ndarray) -> np.ndarray:
    """(C * N, H * W): one row per plane (no copy for a contiguous x)."""
    return np.ascontiguousarray(x).reshape(x.shape[0] * x.shape[1], -1)


def plane_means(x: np.ndarray) -> np.ndarray:
    """(C, N): the mean of each plane."""
    rows = planes(x)
    if rows.dtype not in _FLOATS:
        return rows.mean(axis=1).reshape(x.shape[:2])
    out = np.empty(rows.shape[0], rows.dtype)
    parallel_for(lambda lo, hi: row_means_kernel(rows[lo:hi], out[lo:hi]), rows.shape[0], rows.shape[1])
    return out.reshape(x.shape[:2])


def plane_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(C, N): the sum of a * b over each plane."""
    ra, rb = planes(a), planes(b)
    if ra.dtype not in _FLOATS or rb.dtype != ra.dtype:
        return np.einsum("pk,pk->p", ra, rb).reshape(a.shape[:2])
    out = np.empty(ra.shape[0], ra.dtype)
    parallel_for(lambda lo, hi: row_dots_kernel(ra[lo:hi], rb[lo:hi], out[lo:hi]), ra.shape[0], ra.shape[1])
    return out.reshape(a.shape[:2])


def scale_planes(x: np.ndarray, scale: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """x * scale[c, n] (+ shift[c, n]) over each plane, shaped like x."""
    rows = planes(x)
    sc = np.ascontiguousarray(scale, dtype=rows.dtype).reshape(-1)
    sh = np.zeros_like(sc) if shift is None else np.ascontiguousarray(shift, dtype=rows.dtype).reshape(-1)
    if rows.dtype not in _FLOATS:
        return (rows * sc[:, None] + sh[:, None]).reshape(x.shape)
    y = np.empty_like(rows)
    parallel_for(lambda lo, hi: affine_rows_kernel(rows[lo:hi], sc[lo:hi], sh[lo:hi], y[lo:hi]), rows.shape[0],
                 rows.shape[1])
    return y.reshape(x.shape)
