"""What both backends are fed: seeded weights made well conditioned, input, dlogits, keep masks, optimisers."""

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
        x = x * np.asarray(resolved.input_std)[None, :, None, None] + np.asarray(resolved.input_mean)[None, :, None, None]
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
    from effv2_reference.init import initial_tensors

    if baseline is None:
        from ..oracle import ReferenceAdapter

        baseline = ReferenceAdapter()
    rng = np.random.default_rng([seed, 1])
    calib_spec = with_changes(spec, {"conventions.batch_norm.momentum": 1.0, "conventions.batch_norm.running_var": "biased",
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


def training_configs(clip_norm: float = 1.0):
    """The recipes the update checks run: SGD (Nesterov), RMSProp (TF convention) and AdamW (betas 0.9 / 0.999,
    eps 1e-6, no decoupled decay beside the coupled L2), then one check per recipe field, named by the field: one
    of the three with that field changed, so a backend that ignores the field fails the check that names it.
    AdamW's eps is 1e-6, not its default 1e-8: where a gradient and the L2 term nearly cancel, float32 rounds
    their sum by ~1e-10, which Adam's g / (|g| + eps) magnifies by 1 / eps (to ~6e-3 of the update at 1e-8, over
    the float32 tolerance, for any correct backend; ~6e-5 at 1e-6). `clip_norm`: the gradient_clip_norm check's (small enough to
    clip the check's gradients)."""
    from effv2_spec.training import SGD, AdamW, BatchNormTraining, RMSProp, TrainingConfig, WeightDecay

    wd = WeightDecay(rate=1e-3)
    nesterov = SGD(type="sgd", momentum=0.9, nesterov=True)

    def sgd(**changes):
        return TrainingConfig(**{"optimizer": nesterov, "weight_decay": wd, **changes})

    def rmsprop(**fields):
        return TrainingConfig(optimizer=RMSProp(type="rmsprop", **fields), weight_decay=wd)

    def adamw(**fields):
        return TrainingConfig(optimizer=AdamW(type="adamw", **{"eps": 1e-6, "weight_decay": 0.0, **fields}),
                              weight_decay=wd)

    return {
        "sgd": sgd(),
        "rmsprop": rmsprop(),  # TF convention (defaults)
        "adamw": adamw(),
        "gradient_clip_norm": sgd(gradient_clip_norm=clip_norm),
        "batch_norm.freeze_affine": sgd(batch_norm=BatchNormTraining(mode="frozen", freeze_affine=True)),
        "weight_decay.applies_to": sgd(weight_decay=WeightDecay(rate=1e-3, applies_to=(
            "conv_kernel", "bn_gamma", "bn_beta", "dense_bias"))),
        "sgd.nesterov": sgd(optimizer=SGD(type="sgd", momentum=0.9, nesterov=False)),
        "rmsprop.eps_placement": rmsprop(eps_placement="outside_sqrt"),
        "rmsprop.initial_accumulator": rmsprop(initial_accumulator=0.0),
        "rmsprop.lr_in_momentum": rmsprop(lr_in_momentum=False),
        "adamw.beta1": adamw(beta1=0.5),
        "adamw.beta2": adamw(beta2=0.5),  # two steps: far from 0.999 for the bias-corrected v to move
        "adamw.eps": adamw(eps=1e-3),  # above many of the check's gradients: float32 sees it too
        "adamw.weight_decay": adamw(weight_decay=0.1),
    }


__all__ = ["RESIDUAL_GAMMA", "with_changes", "make_input", "keep_masks", "conformance_tensors", "training_configs"]
