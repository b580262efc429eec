"""The training recipe (training/recipe.py) against expectations written out by hand."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from effv2_reference.optim import RMSPropOptimizer, SGDOptimizer
from effv2_train.plan import PlanError
from effv2_train.recipe import (Recipe, batch_norm_layout, clip_factor, ema_decay, soft_targets,
                                    stage_rates)
from effv2_spec.documents import load_architecture
from effv2_spec.resolve import resolve
from effv2_spec.training import EMA, TrainingConfig

NANO = resolve(load_architecture("efficientnetv2-nano"), (32, 32))
# nano's units (its param table): 11 convolutions, 3 depthwise, 3 squeeze-excitations, one classifier
CONVS = ["stem", "blocks.0.fused", "blocks.1.expand", "blocks.1.project", "blocks.2.expand", "blocks.2.project",
         "blocks.3.expand", "blocks.3.project", "blocks.4.expand", "blocks.4.project", "head"]
DEPTHWISE = ["blocks.2.dw", "blocks.3.dw", "blocks.4.dw"]
SE = ["blocks.2.se", "blocks.3.se", "blocks.4.se"]
BN_UNITS = CONVS + DEPTHWISE


def config(**fields) -> TrainingConfig:
    return TrainingConfig.model_validate(fields)


def test_nano_decays_the_kernels_by_role():
    kernels = ({f"{u}.conv.weight" for u in CONVS + DEPTHWISE} | {f"{u}.{s}.weight" for u in SE
                                                                  for s in ("reduce", "expand")}
               | {"classifier.weight"})
    recipe = Recipe.of(TrainingConfig(), NANO)
    assert recipe.decays == kernels and len(kernels) == 21
    assert recipe.frozen == frozenset() and len(recipe.stepped) == 56
    only_bn = Recipe.of(config(weight_decay={"applies_to": ["bn_gamma"]}), NANO)
    assert only_bn.decays == {f"{u}.bn.weight" for u in BN_UNITS}


def test_frozen_affine_tensors_are_neither_stepped_nor_decayed():
    bn = {f"{u}.bn.{w}" for u in BN_UNITS for w in ("weight", "bias")}
    frozen = config(batch_norm={"mode": "frozen", "freeze_affine": True},
                    weight_decay={"applies_to": ["bn_gamma", "dense_kernel"]})
    recipe = Recipe.of(frozen, NANO)
    assert recipe.frozen == bn and len(bn) == 28 and recipe.frozen_bn
    assert recipe.decays == {"classifier.weight"}
    assert set(recipe.stepped) == {p.name for p in NANO.trainable()} - bn
    statistics_only = Recipe.of(config(batch_norm={"mode": "frozen"}), NANO)
    assert statistics_only.frozen_bn and statistics_only.frozen == frozenset()


def test_clip_factor_closed_form():
    assert clip_factor(25.0, 1.0) == 0.2  # norm 5 -> 1 / 5
    assert clip_factor(0.25, 1.0) == 1.0 and clip_factor(1.0, 1.0) == 1.0  # at or under the norm: untouched
    assert clip_factor(1e6, 3.0) == pytest.approx(3e-3, rel=1e-15)
    assert clip_factor(12.0, None) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert clip_factor(0.0, 1.0) == 1.0
    assert clip_factor(float("nan"), 1.0) == 1.0  # no scaling: the loop reports the divergence
    assert isinstance(clip_factor(25.0, 1.0), float)


def test_clip_factor_traces_in_jax():
    jnp = pytest.importorskip("jax.numpy")
    assert float(clip_factor(jnp.float32(25.0), 1.0, xp=jnp)) == pytest.approx(0.2, rel=1e-7)
    assert float(clip_factor(jnp.float32(0.25), 1.0, xp=jnp)) == 1.0


def test_soft_targets_and_stage_rates():
    t = np.array([[0.0, 1.0, 0.0]])
    np.testing.assert_allclose(soft_targets(t, 3, 0.3), [[0.1, 0.8, 0.1]], rtol=1e-15)
    assert soft_targets(t, 3, 0.0) is t
    dropout, drop_paths = stage_rates(NANO)
    assert dropout == NANO.classifier.dropout and len(drop_paths) == 5 and drop_paths[3] > 0 == drop_paths[0]


def test_ema_rule():
    warm = EMA(decay=0.9999)
    assert ema_decay(warm, 1) == 2 / 11 and ema_decay(warm, 10) == 11 / 20
    assert ema_decay(EMA(decay=0.5, num_updates_warmup=False), 1) == 0.5
    recipe = Recipe.of(config(ema={"decay": 0.9}), NANO)
    assert recipe.ema_rate(1) == 1 - 2 / 11 and recipe.ema_rate(1000) == pytest.approx(0.1, rel=1e-12)
    assert Recipe.of(TrainingConfig(), NANO).ema_rate(5) == 1 - 6 / 15  # the official EMA, in warm-up
    assert Recipe.of(config(ema=None), NANO).ema_rate(5) == 0.0


class _Plan:
    """What batch_norm_layout reads of a TrainingPlan."""

    def __init__(self, batch: int, group: int):
        self.batch_size, self.bn_group_size = batch, group

    def shards(self, world: int):
        if self.batch_size % world:
            raise PlanError("batch_size")


@pytest.mark.parametrize("batch,group,world,layout", [
    (16, 16, 1, (16, 1)), (16, 4, 2, (4, 1)), (16, 8, 2, (8, 1)), (16, 16, 2, (None, 2)), (16, 8, 4, (None, 2)),
    (16, 16, 4, (None, 4))])
def test_batch_norm_layout(batch, group, world, layout):
    assert batch_norm_layout(_Plan(batch, group), world) == layout


@pytest.mark.parametrize("batch,group,world", [(24, 9, 2), (24, 16, 2), (32, 24, 4)])
def test_batch_norm_layouts_that_do_not_fit(batch, group, world):
    with pytest.raises(PlanError, match="batch_norm.group_size"):
        batch_norm_layout(_Plan(batch, group), world)


def test_slot_names_are_the_recipes():
    assert Recipe.of(TrainingConfig(), NANO).slots == ("ms", "mom") == RMSPropOptimizer.slots
    assert Recipe.of(config(optimizer={"type": "sgd"}), NANO).slots == ("momentum",) == SGDOptimizer.slots


def test_the_recipe_imports_without_numba_or_a_framework():
    code = ("import sys, effv2_train.recipe; "
            "print(sorted(m for m in ('numba', 'torch', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
