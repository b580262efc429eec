"""The seeded initialisation every backend starts from: each tensor drawn by its resolved init rule.

Drawn in the resolved table's order from `np.random.default_rng(seed)`, in float64 and then cast,
so both dtypes (and every framework, which loads these tensors) start from the same values.
NumPy only: the framework trainers import it without the oracle's Numba kernels.
"""

from __future__ import annotations

import numpy as np

from effv2_spec.resolve import ParamEntry, ResolvedModel


def init_tensor(rng: np.random.Generator, entry: ParamEntry, dtype) -> np.ndarray:
    """Draw one tensor by its init rule (in float64, so both dtypes get the same values)."""
    kind, scale, shape = entry.init.kind, entry.init.scale, entry.shape
    if kind == "zeros":
        return np.zeros(shape, dtype=dtype)
    if kind == "ones":
        return np.ones(shape, dtype=dtype)
    if kind == "normal":
        return rng.normal(0.0, scale, shape).astype(dtype)
    if kind == "uniform":
        return rng.uniform(-scale, scale, shape).astype(dtype)
    if kind == "truncated_normal":
        # N(0, scale) truncated at 2 scale: redraw the outliers (what TF and PyTorch's trunc_normal_ mean)
        z = rng.standard_normal(shape)
        bad = np.abs(z) > 2.0
        while bad.any():
            z[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(z) > 2.0
        return (z * scale).astype(dtype)
    raise ValueError(f"{entry.name}: unknown init kind {kind!r}")


def initial_tensors(resolved: ResolvedModel, seed: int, dtype="float32") -> dict[str, np.ndarray]:
    """Every parameter and buffer of `resolved` as `ReferenceModel(resolved, dtype, seed)` starts."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    return {entry.name: init_tensor(rng, entry, dt) for entry in resolved.params}
