"""What both backends are fed: seeded weights made well conditioned, input, dlogits, keep masks (the optimiser
recipes: recipes.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.resolve import ConvBN, ResolvedModel, resolve

#: BN gamma/beta of each residual branch's last BN are scaled by this before calibration (see conformance_tensors)
RESIDUAL_GAMMA = 0.2


def with_changes(spec: ArchitectureSpec, changes: dict[str, Any]) -> ArchitectureSpec:
    """`spec` with dotted fields replaced ({"head.dropout": 0.0}), validated again."""
    from effv2_spec.documents import parse_obj

    data = spec.model_dump(mode="json")
    for path, value in changes.items():
        node = data
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return parse_obj(data, ArchitectureSpec)


def make_input(resolved: ResolvedModel, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Standard-normal NCHW input on the network's input scale (raw pixels when the model normalises)."""
    x = rng.standard_normal((batch, resolved.input_channels, *resolved.image_size))
    if resolved.normalize_in_model:
        std, mean = np.asarray(resolved.input_std), np.asarray(resolved.input_mean)
        x = x * std[None, :, None, None] + mean[None, :, None, None]
    return x


def keep_masks(resolved: ResolvedModel, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """0/1 keep masks under the canonical mask names, drawn once and fed to both backends."""
    masks = {f"{b.name}.drop_path": (rng.random(batch) >= b.drop_path_rate) * 1.0
             for b in resolved.blocks if b.residual and b.drop_path_rate > 0}
    rate = resolved.classifier.dropout
    if rate > 0:
        masks["classifier.dropout"] = (rng.random((batch, resolved.classifier.in_features)) >= rate) * 1.0
    return masks


def conformance_tensors(spec: ArchitectureSpec, resolved: ResolvedModel, seed: int, x: np.ndarray,
                        dtype: str = "float64", baseline: Any = None) -> dict[str, np.ndarray]:
    """Seeded oracle init with every BN given non-trivial affine and running statistics.

    1. The oracle's seeded initialisation; BN gamma x U(0.7, 1.3), BN beta, SE and dense biases
       + N(0, 0.1); the last BN of every residual branch scaled by RESIDUAL_GAMMA (0.2), as
       "zero-gamma" residual initialisations do. Without it a deep random network is chaotic:
       float32 rounding alone moves V2-M's eval logits by 2e-2 (5e-5 with it), so no float32
       implementation could meet the 1e-4 tolerance and the check would measure conditioning,
       not conformance. Each branch still contributes ~20 % of the stream.
    2. Calibration: one training-mode pass of the `baseline` adapter (the oracle by default) over
       the check input `x` (BN momentum 1, biased running variance, no dropout / drop path)
       records every BN's batch mean mu and variance s2.
    3. Running statistics are set away from them, mean mu + 0.1 s N(0, 1) and variance s2 x U(0.8, 1.25),
       and gamma / beta are compensated so that each BN's eval output on `x` equals its train output
       in step 2: gamma' = gamma sqrt((var + eps) / (s2 + eps)), beta' = beta + gamma (mean - mu) / sqrt(s2 + eps).

    Eval mode therefore uses running statistics that differ from the batch statistics by a few
    percent everywhere (an implementation that normalises with batch statistics in eval mode, or
    misplaces eps, fails), yet follows the well-conditioned train-mode trajectory.
    """
    from effv2_train.init import initial_tensors

    if baseline is None:
        from ..oracle import ReferenceAdapter

        baseline = ReferenceAdapter()
    rng = np.random.default_rng([seed, 1])
    calib_spec = with_changes(spec, {"conventions.batch_norm.momentum": 1.0,
                                     "conventions.batch_norm.running_var": "biased",
                                     "conventions.stochastic_depth.rate": 0.0, "head.dropout": 0.0})
    tensors = initial_tensors(resolved, seed, dtype)
    for p in resolved.params:
        t = tensors[p.name]
        if p.role == "bn_gamma":
            tensors[p.name] = t * rng.uniform(0.7, 1.3, t.shape)
        elif p.role in ("bn_beta", "se_bias", "dense_bias"):
            tensors[p.name] = t + rng.normal(0.0, 0.1, t.shape)
    for block in resolved.blocks:  # damped residual branches: a deep random network stays well conditioned
        if block.residual:
            last = [u for u in block.layers if isinstance(u, ConvBN)][-1]
            tensors[f"{last.name}.bn.weight"] = tensors[f"{last.name}.bn.weight"] * RESIDUAL_GAMMA
            tensors[f"{last.name}.bn.bias"] = tensors[f"{last.name}.bn.bias"] * RESIDUAL_GAMMA
    calib = baseline.build(resolve(calib_spec, resolved.image_size), dtype, tensors)
    baseline.forward(calib, x, training=True)  # momentum 1: running statistics = this batch's statistics
    stats = baseline.export_tensors(calib)
    del calib
    eps = resolved.bn_eps
    for p in resolved.params:
        if p.role != "bn_running_mean":
            continue
        bn = p.name[: -len("running_mean")]
        mu, s2 = np.asarray(stats[bn + "running_mean"], np.float64), np.asarray(stats[bn + "running_var"], np.float64)
        mean = mu + rng.normal(0.0, 0.1, mu.shape) * np.sqrt(s2)
        var = s2 * rng.uniform(0.8, 1.25, s2.shape)
        gamma, beta = tensors[bn + "weight"], tensors[bn + "bias"]
        tensors[bn + "running_mean"], tensors[bn + "running_var"] = mean, var
        tensors[bn + "weight"] = gamma * np.sqrt((var + eps) / (s2 + eps))
        tensors[bn + "bias"] = beta + gamma * (mean - mu) / np.sqrt(s2 + eps)
    return tensors


__all__ = ["RESIDUAL_GAMMA", "with_changes", "make_input", "keep_masks", "conformance_tensors"]
