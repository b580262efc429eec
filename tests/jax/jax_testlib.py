"""Helpers shared by the JAX adapter tests (tests/jax)."""

from __future__ import annotations

import numpy as np

from shared_specs import tiny_spec  # noqa: F401  (re-exported to the test modules)

from asserts import rel_err


def random_tensors(resolved, seed: int = 0) -> dict[str, np.ndarray]:
    """float64 canonical tensors with non-trivial BN affine and running statistics."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in resolved.params:
        if p.role == "bn_gamma":
            out[p.name] = rng.uniform(0.5, 1.5, p.shape)
        elif p.role == "bn_running_var":
            out[p.name] = rng.uniform(0.5, 1.5, p.shape)
        elif p.role in ("bn_beta", "bn_running_mean", "se_bias", "dense_bias"):
            out[p.name] = rng.normal(0.0, 0.1, p.shape)
        else:
            fan_in = int(np.prod(p.shape[1:]))
            out[p.name] = rng.normal(0.0, 1.0 / np.sqrt(fan_in), p.shape)
    return out


def random_masks(resolved, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    masks = {f"blocks.{b.index}.drop_path": (rng.random(batch) > 0.5) * 1.0
             for b in resolved.blocks if b.residual and b.drop_path_rate > 0}
    if resolved.classifier.dropout > 0:
        shape = (batch, resolved.classifier.in_features)
        masks["classifier.dropout"] = (rng.random(shape) > resolved.classifier.dropout) * 1.0
    return masks


def rel(a, b) -> float:
    """The suite's one relative error (tests/asserts.py)."""
    return rel_err(a, b)
