"""The recipe-field checks are derived from the training schema (adapters/conformance/recipes.py): every field of
every optimiser, and the recipe fields outside it, has a check named by it; each check can fail (its variant's
update differs from its base recipe's well beyond the float32 tolerance); and a backend that ignores one field
fails that field's check and no other."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field

from effv2_adapters.conformance import CHECKS, FIELD_CHECKS, TOLERANCES, run_check
from effv2_adapters.conformance.recipes import (BASES, OPTIMIZER_TYPES, base_config, base_of, field_path, ignoring,
                                                optimizer_field_checks, rule_value, training_configs)
from effv2_adapters.conformance.runner import OPTIMIZER_CHECKS
from effv2_adapters.oracle import ReferenceAdapter
from effv2_spec.base import SpecModel
from effv2_spec.documents import load_architecture
from effv2_spec.training import TrainingConfig

NANO = load_architecture("efficientnetv2-nano")


def _schema_optimizer_fields() -> dict[str, list[str]]:
    """Each optimiser's fields as the published JSON schema of a training document lists them (not model_fields)."""
    schema = TrainingConfig.model_json_schema()
    mapping = schema["properties"]["optimizer"]["discriminator"]["mapping"]
    return {kind: [f for f in schema["$defs"][ref.rsplit("/", 1)[1]]["properties"] if f != "type"]
            for kind, ref in mapping.items()}


def test_every_field_of_every_optimiser_has_a_check():
    fields = _schema_optimizer_fields()
    assert set(fields) == set(OPTIMIZER_TYPES) == {"sgd", "rmsprop", "adamw"}
    wanted = {f"{kind}.{f}" for kind, names in fields.items() for f in names}
    assert len(wanted) == 12 and {"sgd.momentum", "rmsprop.decay", "rmsprop.momentum", "rmsprop.eps"} <= wanted
    outside = {"gradient_clip_norm", "batch_norm.freeze_affine", "weight_decay.applies_to", "weight_decay.rate"}
    assert set(FIELD_CHECKS) == wanted | outside and set(OPTIMIZER_TYPES) | set(FIELD_CHECKS) <= set(CHECKS)
    assert set(training_configs()) == set(OPTIMIZER_TYPES) | set(FIELD_CHECKS)


def test_each_variant_changes_its_one_field_of_the_base_recipe():
    configs = training_configs(clip_norm=0.5)
    for check in FIELD_CHECKS:
        base, variant = configs[base_of(check)].model_dump(), configs[check].model_dump()
        changed = {path for path in _leaves(base) if _at(base, path) != _at(variant, path)}
        expected = {field_path(check)} | ({("batch_norm", "mode")} if check == "batch_norm.freeze_affine" else set())
        assert changed == expected, check  # freeze_affine acts with frozen BN only: the mode goes with it
    for kind in OPTIMIZER_TYPES:
        assert configs[kind].optimizer.model_dump() == {"type": kind, **type(configs[kind].optimizer)(
            type=kind).model_dump(exclude={"type"}), **BASES.get(kind, {})}


def _leaves(tree: dict, prefix: tuple = ()) -> list[tuple]:
    return [p for k, v in tree.items() for p in (_leaves(v, prefix + (k,)) if isinstance(v, dict) else [prefix + (k,)])]


def _at(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


class _Lion(SpecModel):
    """A made-up optimiser: what the rule gives each kind of field, and the field it has no rule for."""

    type: Literal["lion"]
    beta: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    floor: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    scale: Annotated[float, Field(gt=0.0)] = 0.0001
    high: Annotated[float, Field(ge=0.6, le=1.0)] = 0.8
    sign: bool = True
    mode: Literal["a", "b", "c"] = "b"
    warmup_steps: int = 3


def test_the_rule_and_a_field_without_one():
    assert optimizer_field_checks({"lion": _Lion}) == ("lion.beta", "lion.floor", "lion.scale", "lion.high",
                                                       "lion.sign", "lion.mode", "lion.warmup_steps")
    info = _Lion.model_fields
    assert rule_value("lion.beta", info["beta"], 0.9) == 0.45  # half
    assert rule_value("lion.floor", info["floor"], 0.0) == 0.5  # half of 0 is 0: midway to the upper bound
    assert rule_value("lion.scale", info["scale"], 0.0001) == 0.00005
    assert rule_value("lion.high", info["high"], 0.8) == pytest.approx(0.9)  # half (0.4) is below ge=0.6
    assert rule_value("lion.sign", info["sign"], True) is False
    assert rule_value("lion.mode", info["mode"], "b") == "a"
    with pytest.raises(TypeError, match=r"^lion\.warmup_steps: no rule .* type int; .*OVERRIDES$"):
        rule_value("lion.warmup_steps", info["warmup_steps"], 3)


class _BaseRecipeOnly(ReferenceAdapter):
    """The oracle ignoring every field: it steps each optimiser's base recipe whatever the config says."""

    name = "oracle-base-recipe-only"

    def optimizer_steps(self, tensors, grads_per_step, config, lrs, resolved):
        return super().optimizer_steps(tensors, grads_per_step, base_config(config.optimizer.type), lrs, resolved)


def test_every_field_check_can_fail():
    """A check that cannot fail is a defect: each variant's two-step update, from the check's own gradients, is
    more than 10x the float32 tolerance away from its base recipe's (the weakest, weight_decay.rate, ~2e-2)."""
    report = run_check(NANO, "base-only", image_size=32, checks=OPTIMIZER_CHECKS, adapter=_BaseRecipeOnly())
    status = {c.check: (c.status, c.worst_rel_err) for c in report.checks}
    assert all(status[k] == ("passed", 0.0) for k in OPTIMIZER_TYPES), status
    weak = {c: e for c, (s, e) in status.items() if c in FIELD_CHECKS and not e > 10 * TOLERANCES["float32"][c]}
    assert not weak and {s for c, (s, _) in status.items() if c in FIELD_CHECKS} == {"failed"}, status


@pytest.fixture(scope="module")
def planted():
    pytest.importorskip("torch")
    with pytest.MonkeyPatch.context() as mp:  # planted_adapter also holds a copy of the documented example
        mp.syspath_prepend(str(Path(__file__).resolve().parents[2] / "docs" / "examples"))
        mp.syspath_prepend(str(Path(__file__).parent))
        from planted_adapter import IgnoresField

        yield IgnoresField


@pytest.mark.parametrize("check", FIELD_CHECKS)
def test_a_backend_that_ignores_a_field_fails_that_check_only(planted, check):
    """The torch adapter stepping `check`'s field at its base recipe's value (recipes.ignoring) fails the check
    named by that field, and passes every other update check (the bases and the other fields' variants)."""
    report = run_check(NANO, f"ignores-{check}", image_size=32, checks=OPTIMIZER_CHECKS, adapter=planted(check))
    failed = [c.check for c in report.checks if c.status != "passed"]
    assert failed == [check], [(c.check, c.status, c.worst_rel_err) for c in report.checks]


def test_ignoring_a_field_of_another_optimiser_changes_nothing():
    configs = training_configs()
    assert ignoring(configs["rmsprop.eps"], "adamw.eps") == configs["rmsprop.eps"]
    assert ignoring(configs["rmsprop.eps"], "rmsprop.eps") == configs["rmsprop"]
    assert ignoring(configs["gradient_clip_norm"], "gradient_clip_norm").gradient_clip_norm is None
