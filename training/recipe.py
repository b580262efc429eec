"""The training recipe: what one optimisation step means, read once per run from the documents.

The oracle, PyTorch and JAX trainers (and their adapters' `optimizer_steps`) all take the step's
semantics from here and keep only tensor arithmetic and collectives (docs/internals.md, "Optimisers"):

* loss: softmax cross-entropy, mean over the global batch, against soft targets
  `t * (1 - s) + s / K` (label smoothing s, K classes; mixup / cutmix targets are already soft);
* L2 by role: `g += rate * w` for the trainable tensors whose resolved role is in
  `weight_decay.applies_to` (`Recipe.decays`), frozen tensors excepted; AdamW's decoupled decay
  (`w -= lr * wd * w`, inside the optimiser) applies to the same `Recipe.decays`;
* then clipping: the global norm is taken over the gradients *with* the L2 term (it is part of the
  loss), over every tensor the optimiser steps, and every gradient is multiplied by `clip_factor`;
* frozen BN: with `batch_norm.mode == 'frozen'` BN normalises with its running statistics; with
  `freeze_affine` its gamma and beta (`Recipe.frozen`) are neither stepped nor decayed;
* the BN statistics groups of a world size: `batch_norm_layout`;
* the EMA after step t (1-based): `shadow -= (1 - d) * (shadow - value)`, d = `ema_decay(ema, t)`;
* each optimiser's canonical slot names (`SLOTS`): checkpoints name state `<slot>/<tensor>`.

NumPy only (no numba, no framework): every trainer imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np

from effv2_spec.resolve import ResolvedModel
from effv2_spec.training import EMA, OPTIMIZERS, TrainingConfig

#: canonical per-tensor slots of each optimiser (declared with it in the spec: `SGD.slots`, ...), in the order
#: its backends list their native state; every checkpoint also keeps the step count, `steps`
SLOTS: dict[str, tuple[str, ...]] = {get_args(cls.model_fields["type"].annotation)[0]: cls.slots for cls in OPTIMIZERS}

#: resolved roles of the BN affine tensors that `batch_norm.freeze_affine` keeps fixed
FROZEN_AFFINE_ROLES = ("bn_gamma", "bn_beta")


def frozen_names(config: TrainingConfig, resolved: ResolvedModel) -> frozenset[str]:
    """Tensors the optimiser must not touch: BN gamma / beta when BN is frozen with `freeze_affine`."""
    bn = config.batch_norm
    if bn.mode != "frozen" or not bn.freeze_affine:
        return frozenset()
    return frozenset(p.name for p in resolved.trainable() if p.role in FROZEN_AFFINE_ROLES)


def decayed_names(config: TrainingConfig, resolved: ResolvedModel) -> frozenset[str]:
    """Trainable, not frozen tensors whose role is in `weight_decay.applies_to` (whatever the rate)."""
    roles, frozen = set(config.weight_decay.applies_to), frozen_names(config, resolved)
    return frozenset(p.name for p in resolved.trainable() if p.role in roles and p.name not in frozen)


@dataclass(frozen=True)
class Recipe:
    """The step's semantics for one run (`Recipe.of(config, resolved)`)."""

    stepped: tuple[str, ...]
    """Tensors the optimiser updates: the trainable ones in the resolved table's order, less `frozen`."""
    frozen: frozenset[str]
    decays: frozenset[str]
    decay_rate: float
    clip_norm: float | None
    label_smoothing: float
    frozen_bn: bool
    slots: tuple[str, ...]
    ema: EMA | None

    @classmethod
    def of(cls, config: TrainingConfig, resolved: ResolvedModel) -> "Recipe":
        frozen = frozen_names(config, resolved)
        return cls(stepped=tuple(p.name for p in resolved.trainable() if p.name not in frozen), frozen=frozen,
                   decays=decayed_names(config, resolved), decay_rate=float(config.weight_decay.rate),
                   clip_norm=config.gradient_clip_norm, label_smoothing=float(config.label_smoothing),
                   frozen_bn=config.batch_norm.mode == "frozen", slots=config.optimizer.slots,
                   ema=config.ema)

    def l2_rate(self, name: str) -> float:
        """The L2 rate added to `name`'s gradient (0.0 for a tensor that does not decay)."""
        return self.decay_rate if name in self.decays else 0.0

    def ema_rate(self, num_updates: int) -> float:
        """1 - d of the EMA update made after global step `num_updates` (1-based); 0.0 without an EMA."""
        return 1.0 - ema_decay(self.ema, num_updates) if self.ema is not None else 0.0


def soft_targets(targets, num_classes: int, label_smoothing: float):
    """`targets * (1 - s) + s / K`: plain arithmetic, so NumPy, torch and jax arrays alike (unchanged when s = 0)."""
    if not label_smoothing:
        return targets
    return targets * (1.0 - label_smoothing) + label_smoothing / num_classes


def clip_factor(sq_norm, clip_norm: float | None, xp=np):
    """What every gradient is multiplied by, given the global squared norm of the gradients (L2 included).

    `clip_norm / norm` when the norm exceeds `clip_norm`, else 1 (also for a NaN norm, which the
    loop reports as divergence). `xp`: the array namespace of `sq_norm` (numpy, or jax.numpy inside
    a compiled step); with numpy the answer is a Python float."""
    if clip_norm is None:
        return 1.0
    norm = xp.sqrt(sq_norm)
    with np.errstate(divide="ignore"):  # the branch not taken for a zero norm
        factor = xp.where(norm > clip_norm, clip_norm / norm, 1.0)
    return float(factor) if xp is np else factor


def ema_decay(config: EMA, num_updates: int) -> float:
    """The decay of the EMA update made at global step `num_updates` (1-based): TF's
    `min(decay, (1 + t) / (10 + t))` with `num_updates_warmup`, else `decay`."""
    if config.num_updates_warmup:
        return min(config.decay, (1.0 + num_updates) / (10.0 + num_updates))
    return config.decay


def batch_norm_layout(plan, world: int) -> tuple[int | None, int]:
    """(BN group size within one process's rows or None, span): how the plan's BN groups fall on
    `world` processes. span > 1: one group holds the rows of `span` processes (None then).
    A layout that does not fit is a `plan.PlanError` naming the field."""
    from .plan import PlanError

    plan.shards(world)  # whole shards first: a batch that does not split says so
    local, g = plan.batch_size // world, plan.bn_group_size
    if g <= local:
        if local % g:
            raise PlanError(f"batch_norm.group_size: a group of {g} samples does not fit the {local} rows of each "
                            f"of {world} processes (it must divide them)")
        return g, 1
    if g % local or world % (g // local):
        raise PlanError(f"batch_norm.group_size: a group of {g} samples must be the rows of a number of processes "
                        f"({local} rows each) that divides the {world} processes")
    return None, g // local


def stage_rates(resolved: ResolvedModel) -> tuple[float, tuple[float, ...]]:
    """(classifier dropout, each block's drop-path rate) of a stage's resolved table."""
    return float(resolved.classifier.dropout), tuple(float(b.drop_path_rate) for b in resolved.blocks)


__all__ = ["SLOTS", "Recipe", "frozen_names", "decayed_names", "soft_targets", "clip_factor", "ema_decay",
           "batch_norm_layout", "stage_rates"]
