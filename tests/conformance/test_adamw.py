"""AdamW, the optimiser added to show what a new one touches (docs/internals.md, "Adding an optimiser"): the
oracle against a closed form and against torch.optim.AdamW; its conformance checks on torch and JAX; a backend
that ignores the decoupled decay fails the check named by it; the float64 trajectories of a two-stage run
(oracle, torch 1 process, JAX 1 device) and resumes across frameworks with AdamW slots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from effv2_adapters.conformance import FIELD_CHECKS, run_check
from effv2_adapters.conformance.recipes import training_configs
from effv2_adapters.conformance.numerics import rel_err
from effv2_adapters.oracle import ReferenceAdapter
from effv2_adapters.train_check import check_schedule, check_training, compare_states
from effv2_train.init import initial_tensors
from effv2_reference.optim import build_optimizer
from effv2_cli import main
from effv2_spec.documents import load_architecture, parse_obj
from effv2_spec.resolve import resolve
from effv2_spec.training import AdamW, TrainingConfig, WeightDecay

B1, B2, EPS, WD, L2, LRS = 0.8, 0.95, 1e-6, 0.05, 1e-3, (0.1, 0.05)
CONFIG = TrainingConfig(optimizer=AdamW(type="adamw", beta1=B1, beta2=B2, eps=EPS, weight_decay=WD),
                        weight_decay=WeightDecay(rate=L2))
ADAMW_CHECKS = ("adamw",) + tuple(c for c in FIELD_CHECKS if c.startswith("adamw."))


@pytest.fixture(scope="module")
def problem():
    """nano at 32 px, float64: the seeded trainable tensors and two random gradient sets."""
    resolved = resolve(load_architecture("efficientnetv2-nano"), (32, 32))
    tensors = initial_tensors(resolved, 0, "float64")
    w0 = {p.name: tensors[p.name] for p in resolved.trainable()}
    rng = np.random.default_rng(11)
    grads = [{n: rng.standard_normal(v.shape) * 1e-2 for n, v in w0.items()} for _ in range(2)]
    decays = {p.name for p in resolved.trainable() if p.role in CONFIG.weight_decay.applies_to}
    return resolved, w0, grads, decays


def oracle_two_steps(resolved, w0, grads):
    params = {n: v.copy() for n, v in w0.items()}
    opt = build_optimizer(CONFIG, resolved)
    for g, lr in zip(grads, LRS):
        opt.step(params, g, lr)
    return params, opt.state_dict()


def test_the_oracle_equals_the_closed_form_of_two_steps(problem):
    """Two steps written out: step 1's bias-corrected ratio is g / (|g| + eps); step 2's moments are
    (b g1 + g2) / (1 + b) and (b g1^2 + g2^2) / (1 + b) once corrected. Coupled L2 in g, decoupled decay on w."""
    resolved, w0, (G1, G2), decays = problem
    got, state = oracle_two_steps(resolved, w0, (G1, G2))
    for n, w in w0.items():
        rate, wd = (L2, WD) if n in decays else (0.0, 0.0)
        g1 = G1[n] + rate * w
        w1 = w - LRS[0] * (g1 / (np.abs(g1) + EPS) + wd * w)
        g2 = G2[n] + rate * w1
        m_hat, v_hat = (B1 * g1 + g2) / (1 + B1), (B2 * g1**2 + g2**2) / (1 + B2)
        w2 = w1 - LRS[1] * (m_hat / (np.sqrt(v_hat) + EPS) + wd * w1)
        assert rel_err(got[n] - w, w2 - w)[0] <= 1e-12, n  # relative to the tensor's largest update
        assert rel_err(state[f"exp_avg/{n}"], (1 - B1) * (B1 * g1 + g2))[0] <= 1e-12, n
        assert rel_err(state[f"exp_avg_sq/{n}"], (1 - B2) * (B2 * g1**2 + g2**2))[0] <= 1e-12, n
    assert int(state["steps"]) == 2 and (len(decays), len(w0)) == (21, 56)  # nano: 21 kernels of 56 tensors decay


def test_the_oracle_equals_torch_optim_adamw(problem):
    """torch.optim.AdamW itself, with the decoupled decay in the decaying tensors' group and the L2 added by hand."""
    torch = pytest.importorskip("torch")
    resolved, w0, grads, decays = problem
    want, state = oracle_two_steps(resolved, w0, grads)
    params = {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in w0.items()}
    opt = torch.optim.AdamW([{"params": [p for n, p in params.items() if n in decays], "weight_decay": WD},
                             {"params": [p for n, p in params.items() if n not in decays], "weight_decay": 0.0}],
                            lr=LRS[0], betas=(B1, B2), eps=EPS, foreach=False)
    for g, lr in zip(grads, LRS):
        for n, p in params.items():
            p.grad = torch.from_numpy(g[n] + (L2 * p.detach().numpy() if n in decays else 0.0))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    for n, p in params.items():
        assert rel_err(p.detach().numpy() - w0[n], want[n] - w0[n])[0] <= 1e-12, n
        for slot in ("exp_avg", "exp_avg_sq"):
            assert rel_err(opt.state[p][slot].numpy(), state[f"{slot}/{n}"])[0] <= 1e-12, (slot, n)


def test_each_adamw_field_check_moves_the_update(problem):
    """A backend that ignores a field computes the base check's answer: each field check's answer is more than
    the float32 tolerance away from it, so the check named by the field fails in either dtype."""
    resolved, w0, grads, _ = problem
    configs = training_configs()
    oracle = ReferenceAdapter()

    def update(config):
        after = oracle.optimizer_steps(dict(w0), grads, config, list(LRS), resolved)
        return {n: after[n] - w0[n] for n in w0}

    base = update(configs["adamw"])
    for check in ADAMW_CHECKS[1:]:
        moved = update(configs[check])
        assert max(rel_err(moved[n], base[n])[0] for n in w0) > 1e-2, check


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_the_adamw_checks_pass(framework, dtype):
    pytest.importorskip(framework)
    report = run_check(load_architecture("efficientnetv2-nano"), framework, dtype=dtype, image_size=32,
                       checks=ADAMW_CHECKS)
    assert [(c.check, c.status) for c in report.checks] == [(c, "passed") for c in ADAMW_CHECKS]
    assert max(c.worst_rel_err for c in report.checks) <= (1e-12 if dtype == "float64" else 1e-4)


def test_a_backend_that_ignores_the_decoupled_decay_fails_naming_it(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "docs" / "examples"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    result = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework",
                                       "planted_adapter:IgnoresDecoupledDecay", "--image-size", "32", "--checks",
                                       "adamw,adamw.weight_decay"])
    assert result.exit_code == 1, result.output
    verdict = result.output.strip().splitlines()[-1]
    assert verdict.startswith("FAIL: adamw.weight_decay worst tensor "), verdict
    assert "adamw worst" not in verdict  # without the decoupled decay the two agree


# ---- trajectories: a two-stage float64 run, oracle / torch 1 process / JAX 1 device -------------------------

SIZE, STEPS = 16, 4


@pytest.fixture(scope="module")
def docs():
    from effv2_spec.presets import load as load_preset

    arch = json.loads(load_preset("efficientnetv2-nano").model_dump_json())
    arch["conventions"]["stochastic_depth"]["rate"] = 0.2
    # decoupled decay 0.05 beside the coupled L2 1e-4; eps 1e-5, not 1e-8: Adam turns a gradient element below
    # eps into g / eps, so the last-bit differences of two correct float64 backends grow by lr / eps; at 1e-8 the
    # end states differ by 1e-8 (1e-10 at 1e-6, 3e-11 at 1e-5; torch, nano, these four steps)
    training = check_training("adamw", 16, 8)
    assert training["optimizer"] == {"type": "adamw", "weight_decay": 0.05, "eps": 1e-5}
    assert training["weight_decay"]["rate"] == 1e-4
    return parse_obj(arch), parse_obj(check_schedule(STEPS, SIZE)), parse_obj(training)


@pytest.fixture(scope="module")
def data():
    from effv2_train.data import load_digits, split

    train, held = split(load_digits(SIZE))
    return train.subset(np.arange(32), "digits:32"), held.subset(np.arange(16), "digits:held")


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    old = os.environ.get("EFFV2_JAX_CACHE")
    os.environ["EFFV2_JAX_CACHE"] = str(tmp_path_factory.mktemp("jax-cache"))
    yield
    os.environ.pop("EFFV2_JAX_CACHE", None) if old is None else os.environ.__setitem__("EFFV2_JAX_CACHE", old)


def loop(framework, docs, data, out=None):
    from effv2_train.trainloop import ProgressiveLoop

    if framework == "oracle":
        from effv2_reference.train import Trainer

        return Trainer(*docs, *data, seed=1, dtype="float64", out_dir=out, checkpoint_every=None)
    if framework == "torch":
        from effv2_adapters.torch.train import make_torch_backend

        make, _ = make_torch_backend(dtype="float64", device="cpu", precision="float32", channels_last=False,
                                     compile=False)
    else:
        from effv2_adapters.jax.train import make_jax_backend

        make, _ = make_jax_backend(dtype="float64", device="cpu", precision="float32")
    return ProgressiveLoop(*docs, *data, make, seed=1, dtype="float64", out_dir=out, checkpoint_every=None)


def assert_same(ref, got):
    def states(run):
        model, opt, ema = run.backend.state()
        return {"model": model, "optimizer": opt, "ema": ema}

    parts, problems = compare_states(states(ref), states(got), "float64")
    assert not problems, problems
    for p in parts:
        assert p.worst <= 1e-9, (p.part, p.worst_name, p.worst)
    return {p.part: p.tensors for p in parts}


@pytest.fixture(scope="module")
def oracle_run(docs, data):
    run = loop("oracle", docs, data)
    run.run()
    return run


@pytest.mark.slow  # two-stage runs of nano at 8 and 16 px; JAX compiles each stage's step (~20 s)
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_two_stage_run_equals_the_oracle(docs, data, oracle_run, jax_cache, framework):
    pytest.importorskip(framework)
    run = loop(framework, docs, data)
    run.run()
    tensors = assert_same(oracle_run, run)
    assert tensors["optimizer"] == 2 * 56  # exp_avg and exp_avg_sq of every trainable tensor of nano
    assert [h["loss"] for h in run.history] == pytest.approx([h["loss"] for h in oracle_run.history], rel=1e-12)
    assert [h["image_size"] for h in oracle_run.history] == [8, 16]


@pytest.mark.slow
@pytest.mark.parametrize("first,second", [("torch", "oracle"), ("oracle", "torch"), ("oracle", "jax")])
def test_a_run_resumes_in_another_framework(docs, data, oracle_run, jax_cache, tmp_path, first, second):
    """Stopped after step 3 (inside the second stage), resumed elsewhere from the checkpoint's AdamW slots and
    step count (the bias correction of step 4 needs t = 4): the oracle's end state."""
    for fw in (first, second):
        if fw != "oracle":
            pytest.importorskip(fw)
    head = loop(first, docs, data, out=tmp_path)
    head.run(stop_at=3)
    tail = loop(second, docs, data, out=tmp_path)
    tail.resume()
    assert tail.step == 3
    tail.run()
    assert_same(oracle_run, tail)


@pytest.mark.slow  # the oracle's and torch's four-step runs
def test_check_train_steps_with_adamw():
    pytest.importorskip("torch")
    r = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", "torch", "--train-steps", "4",
                                  "--optimizer", "adamw", "--image-size", "16", "--json"])
    assert r.exit_code == 0, r.output
    parts = {p["part"]: p for p in json.loads(r.stdout)["parts"]}
    assert all(p["worst"] <= 1e-9 for p in parts.values()), parts
    assert parts["optimizer"]["tensors"] == 2 * 56  # exp_avg and exp_avg_sq of nano's 56 trainable tensors
