"""How two tensors are compared: relative error on the baseline's scale, and the gradient scale rule."""

from __future__ import annotations

from typing import Mapping

import numpy as np


def rel_err(a: np.ndarray, b: np.ndarray, floor: float = 0.0) -> tuple[float, float, float]:
    """(max|a - b| / scale, max|b|, scale) with scale = max(max|b|, floor); the absolute error when
    the scale is 0. NaN/inf and shape mismatches give an infinite error."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0 and b.size == 0:
        return 0.0, 0.0, 0.0
    max_ref = float(np.max(np.abs(b))) if b.size else 0.0
    if a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf"), max_ref, max_ref
    scale = max(max_ref, floor)
    diff = float(np.max(np.abs(a - b)))
    return (diff / scale if scale > 0 else diff), max_ref, scale


def unit_of(name: str) -> str:
    """The unit a canonical tensor belongs to: 'blocks.3.project.bn.bias' -> 'blocks.3.project'.
    (The resolved table says it too, as `ParamEntry.unit`; this works on bare names.)"""
    parts = name.split(".")
    return ".".join(parts[:-2]) if len(parts) > 2 else parts[0]


def gradient_scales(grads: Mapping[str, np.ndarray], dtype: str) -> dict[str, float]:
    """Per tensor, the scale its gradient error is measured on.

    A tensor's own max|g|, except where the baseline's gradient is numerically zero
    (max|g| <= sqrt(eps) * the largest gradient of its unit): a BN beta whose output reaches
    the next training-mode BN only through linear layers (every projection BN beta of a block
    without drop-path variation) has a mathematically zero gradient, so both sides hold rounding
    noise; that noise is measured on the unit's gradient scale instead of on itself.
    """
    unit_max: dict[str, float] = {}
    for name, g in grads.items():
        m = float(np.max(np.abs(g))) if np.size(g) else 0.0
        unit_max[unit_of(name)] = max(unit_max.get(unit_of(name), 0.0), m)
    threshold = float(np.sqrt(np.finfo(np.dtype(dtype)).eps))
    floors = {}
    for name, g in grads.items():
        m = float(np.max(np.abs(g))) if np.size(g) else 0.0
        u = unit_max[unit_of(name)]
        floors[name] = u if m <= threshold * u else 0.0
    return floors


__all__ = ["rel_err", "unit_of", "gradient_scales"]
