"""The recipe fields in `effv2 check`: the oracle, torch and JAX agree with clipping on, and a planted backend
that ignores a field (tests/conformance/planted_adapter.py) fails the check named by that field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from effv2_adapters.conformance.numerics import rel_err
from effv2_adapters.oracle import ReferenceAdapter
from effv2_cli import main
from effv2_spec.documents import load_architecture
from effv2_spec.resolve import resolve
from effv2_spec.training import SGD, TrainingConfig, WeightDecay

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _two_steps(adapter, config):
    """nano at 32 px, float64: two optimiser steps from the seeded init and two random gradient sets."""
    from effv2_train.init import initial_tensors

    resolved = resolve(load_architecture("efficientnetv2-nano"), (32, 32))
    tensors = initial_tensors(resolved, 0, "float64")
    before = {p.name: tensors[p.name] for p in resolved.trainable()}
    rng = np.random.default_rng(7)
    grads = [{n: rng.standard_normal(v.shape) for n, v in before.items()} for _ in range(2)]
    after = adapter.optimizer_steps(dict(before), grads, config, [0.1, 0.05], resolved)
    return {n: after[n] - before[n] for n in before}


CLIPPED = TrainingConfig(optimizer=SGD(type="sgd", momentum=0.9, nesterov=True), weight_decay=WeightDecay(rate=1e-3),
                         gradient_clip_norm=1e-3)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_clipped_updates_equal_the_oracle(framework):
    """The review's probe (nano, 32 px, SGD Nesterov, L2 1e-3, clip 1e-3, two steps): 2.8e5 before the recipe."""
    pytest.importorskip(framework)
    if framework == "torch":
        from effv2_adapters.torch.adapter import TorchAdapter as Adapter
    else:
        from effv2_adapters.jax.adapter import JaxAdapter as Adapter
    want, got = _two_steps(ReferenceAdapter(), CLIPPED), _two_steps(Adapter(), CLIPPED)
    unclipped = _two_steps(ReferenceAdapter(), CLIPPED.model_copy(update={"gradient_clip_norm": None}))
    assert max(rel_err(got[n], want[n])[0] for n in want) <= 1e-9
    # the clip bites: the update is thousands of times smaller than without it
    assert max(np.abs(want[n]).max() for n in want) < 1e-3 * max(np.abs(unclipped[n]).max() for n in want)


@pytest.fixture
def on_path(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


@pytest.mark.parametrize("planted,field", [("IgnoresClipping", "gradient_clip_norm"),
                                           ("IgnoresFrozenAffine", "batch_norm.freeze_affine")])
def test_a_backend_that_ignores_a_recipe_field_fails_naming_it(on_path, planted, field):
    checks = f"sgd,{field}"
    result = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", f"planted_adapter:{planted}",
                                       "--image-size", "32", "--checks", checks])
    assert result.exit_code == 1, result.output
    verdict = result.output.strip().splitlines()[-1]
    assert verdict.startswith(f"FAIL: {field} worst tensor "), verdict
    assert "sgd worst" not in verdict  # the same steps without the field agree


@pytest.mark.parametrize("framework,dtype", [("torch", "float64"), ("torch", "float32"), ("jax", "float64"),
                                             ("jax", "float32")])
def test_the_torch_and_jax_adapters_pass_every_field_check(framework, dtype):
    """Clipping on (a quarter of the first step's gradient norm), frozen BN, every optimiser field: float32 too,
    where the checks run when named (so a field check's value must not make a correct float32 backend fail)."""
    pytest.importorskip(framework)
    from effv2_adapters.conformance import FIELD_CHECKS

    result = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", framework, "--image-size", "32",
                                       "--dtype", dtype, "--checks", ",".join(FIELD_CHECKS), "--json"])
    assert result.exit_code == 0, result.output
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    assert set(checks) == set(FIELD_CHECKS) and all(c["status"] == "passed" for c in checks.values()), checks
    assert max(c["worst_rel_err"] for c in checks.values()) <= (1e-12 if dtype == "float64" else 1e-4)


@pytest.mark.slow  # two short trainings per framework (the oracle's and the framework's), ~15 s / ~35 s
@pytest.mark.parametrize("framework,optimizer", [("torch", "sgd"), ("jax", "rmsprop")])
def test_train_check_with_clipping_and_frozen_bn(framework, optimizer):
    """`--recipe clipped-frozen-bn`: a clip norm of 0.05, under the gradient norms of the check's steps (0.15 to
    0.27 for the oracle's SGD run at 24 px), and frozen BN; the trainer ends where the oracle does, and the
    frozen gamma / beta have no optimiser slots."""
    pytest.importorskip(framework)
    r = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", framework, "--train-steps", "4",
                                  "--optimizer", optimizer, "--recipe", "clipped-frozen-bn", "--image-size", "16",
                                  "--json"])
    assert r.exit_code == 0, r.output
    parts = {p["part"]: p for p in json.loads(r.stdout)["parts"]}
    assert all(p["worst"] <= 1e-9 for p in parts.values()), parts
    slots_per_tensor = 1 if optimizer == "sgd" else 2
    assert parts["optimizer"]["tensors"] == slots_per_tensor * (56 - 28)  # nano: 56 trainable, 28 BN gamma / beta


def test_recipe_is_a_train_check_option():
    r = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", "torch", "--recipe",
                                  "clipped-frozen-bn"])
    assert r.exit_code == 2 and "only with --train-steps" in r.output
