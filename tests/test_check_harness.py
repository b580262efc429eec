"""The conformance harness (effv2_adapters.check) and `effv2 check`: its own mechanics.

The harness must report agreement when there is agreement and catch any disagreement. Its
mechanics are tested here against a stand-in oracle (the float64 torch model driven through
the oracle interface), so they do not depend on any one backend being right; the real
oracle-vs-backend checks live in tests/torch (and tests/jax).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from effv2_adapters import check as harness
from effv2_adapters.check import CHECKS, CheckError, gradient_scales, rel_err, run_check, unit_of
from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.cli import main
from effv2_spec.documents import load_architecture, parse_obj


# ---- numerics, no framework needed ----------------------------------------------------------------
def test_rel_err():
    b = np.array([1.0, -4.0, 2.0])
    assert rel_err(b, b) == (0.0, 4.0, 4.0)
    assert rel_err(b + np.array([0.0, 0.0, 0.4]), b)[0] == pytest.approx(0.1)
    assert rel_err(np.zeros(3), np.zeros(3))[0] == 0.0
    assert rel_err(np.full(3, 1e-3), np.zeros(3))[0] == pytest.approx(1e-3)  # all-zero reference: absolute
    assert rel_err(np.array([np.nan, 0, 0]), b)[0] == float("inf")
    assert rel_err(np.zeros(2), b)[0] == float("inf")  # shape mismatch
    assert rel_err(np.full(3, 1e-3), np.zeros(3), floor=10.0)[0] == pytest.approx(1e-4)


def test_gradient_scales_only_rescue_numerically_zero_gradients():
    grads = {
        "blocks.1.project.conv.weight": np.array([3.0, -1.0]),
        "blocks.1.project.bn.weight": np.array([0.5]),
        "blocks.1.project.bn.bias": np.array([1e-17, -2e-17]),  # mathematically zero: noise
        "blocks.2.se.reduce.bias": np.array([1e-6]),  # small but real
        "blocks.2.se.reduce.weight": np.array([1.0]),
        "classifier.bias": np.array([0.0]),
        "classifier.weight": np.array([2.0]),
    }
    floors = gradient_scales(grads, "float64")
    assert floors["blocks.1.project.bn.bias"] == 3.0
    assert floors["classifier.bias"] == 2.0
    assert floors["blocks.2.se.reduce.bias"] == 0.0 and floors["blocks.1.project.conv.weight"] == 0.0
    assert unit_of("blocks.1.project.bn.bias") == "blocks.1.project" and unit_of("classifier.weight") == "classifier"


def test_tolerances_are_the_design_numbers():
    assert set(harness.TOLERANCES["float64"].values()) == {1e-9}
    f32 = harness.TOLERANCES["float32"]
    assert f32["eval_logits"] == f32["train_logits"] == 1e-4 and f32["gradients"] == 1e-3


# ---- bad input through the CLI: clear message, exit 1, no traceback ---------------------------------
@pytest.mark.parametrize("args,message", [
    (["check", "no-such-preset", "--framework", "torch"], "no such file or preset"),
    (["check", "efficientnetv2-nano", "--framework", "torch", "--image-size", "3"], "total stride"),
    (["check", "{bad}", "--framework", "torch"], "stages[0].kernel: must be odd"),
])
def test_check_cli_bad_input(tmp_path, args, message):
    pytest.importorskip("torch")
    doc = json.loads(load_architecture("efficientnetv2-nano").model_dump_json())
    doc["stages"][0]["kernel"] = 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    result = CliRunner().invoke(main, [a.format(bad=bad) for a in args])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_check_cli_framework_not_installed(monkeypatch):
    from effv2_adapters import registry

    monkeypatch.setitem(registry.ADAPTERS, "ghost", "effv2_adapters.no_such_backend:Adapter")
    result = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", "ghost"])
    assert result.exit_code == 1 and "cannot be imported" in result.output and "Traceback" not in result.output


def test_generate_cli_bad_input(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["generate", "efficientnetv2-nano", "--framework", "mxnet", "-o", str(tmp_path / "m.py")])
    assert result.exit_code == 2 and "unknown framework" in result.output  # a usage error
    result = runner.invoke(main, ["generate", "nope", "--framework", "torch"])
    assert result.exit_code == 1 and "no such file or preset" in result.output
    assert not (tmp_path / "m.py").exists()


# ---- mechanics against a stand-in oracle -------------------------------------------------------------
class StandInOracle:
    """The float64 torch model behind the oracle interface (masks drawn with NumPy, as the oracle does)."""

    def __init__(self, spec, resolved, dtype, seed, perturb: dict | None = None):
        import torch

        from effv2_adapters.torch import build_model

        self.torch = torch
        self.resolved = resolved
        self.model = build_model(resolved, torch.float64, seed=seed)
        self.rng = np.random.default_rng(seed)
        self.last = {}
        self.out = None
        self.perturb = perturb or {}

    def state(self):
        return {k: v.numpy().copy() for k, v in self.model.state_dict().items()}

    def release(self):
        self.model = None

    def load(self, tensors):
        self.model.load_state_dict({k: self.torch.from_numpy(np.array(v, np.float64)) for k, v in tensors.items()})

    def forward(self, x, training, masks=None):
        if training and masks is None:
            masks = {}
            for b in self.resolved.blocks:
                if b.residual and b.drop_path_rate > 0:
                    masks[f"blocks.{b.index}.drop_path"] = (self.rng.random(x.shape[0]) >= b.drop_path_rate) * 1.0
            p = self.resolved.classifier.dropout
            if p > 0:
                masks["classifier.dropout"] = (self.rng.random((x.shape[0], self.resolved.classifier.in_features)) >= p) * 1.0
        self.last = masks or {}
        self.model.train(training)
        t = {k: self.torch.from_numpy(v) for k, v in self.last.items()}
        self.out = self.model(self.torch.from_numpy(np.asarray(x, np.float64)), t)
        out = self.out.detach().numpy().copy()
        return out * (1 + self.perturb.get("train_logits" if training else "eval_logits", 0.0))

    def last_masks(self):
        return dict(self.last)

    def backward(self, dlogits):
        self.model.zero_grad()
        (self.out * self.torch.from_numpy(dlogits)).sum().backward()
        grads = {n: p.grad.numpy().copy() for n, p in self.model.named_parameters()}
        if "gradients" in self.perturb:
            grads["classifier.weight"] = grads["classifier.weight"] * (1 + self.perturb["gradients"])
        return grads

    def optimizer_steps(self, tensors, grads_per_step, config, lrs):
        from effv2_adapters.torch.optim import optimizer_steps

        out = optimizer_steps(tensors, grads_per_step, config, lrs, self.resolved)
        if config.optimizer.type in self.perturb:
            out["stem.conv.weight"] = out["stem.conv.weight"] + self.perturb[config.optimizer.type]
        return out


def _spec() -> ArchitectureSpec:
    doc = json.loads(load_architecture("efficientnetv2-nano").model_dump_json())
    doc["head"]["dropout"] = 0.5
    doc["conventions"]["stochastic_depth"]["rate"] = 0.5
    return parse_obj(doc, ArchitectureSpec)


def test_run_check_agreement_and_report():
    pytest.importorskip("torch")
    report = run_check(_spec(), "torch", dtype="float64", image_size=33, batch=3, seed=1, oracle_factory=StandInOracle)
    assert report.passed, report.to_dict(per_tensor=False)
    assert [c.check for c in report.checks] == list(CHECKS)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] and data["image_size"] == [33, 33] and data["batch"] == 3
    by_check = {c["check"]: c for c in data["checks"]}
    n_trainable = sum(1 for t in data["tensors"] if t["check"] == "gradients")
    assert by_check["gradients"]["tensors"] == n_trainable > 10
    from effv2_spec.resolve import resolve

    assert by_check["running_stats"]["tensors"] == len(resolve(_spec()).buffers())
    assert all(t["rel_err"] <= 1e-9 for t in data["tensors"])


@pytest.mark.parametrize("check", ["eval_logits", "train_logits", "gradients", "sgd", "rmsprop"])
def test_run_check_catches_disagreement(check):
    pytest.importorskip("torch")

    def factory(spec, resolved, dtype, seed):
        return StandInOracle(spec, resolved, dtype, seed, perturb={check: 1e-6})

    report = run_check(_spec(), "torch", image_size=32, checks=(check,), oracle_factory=factory)
    assert not report.passed
    assert report.checks[0].worst_rel_err > 1e-9


def test_calibrated_weights_make_eval_mode_non_trivial():
    pytest.importorskip("torch")
    spec = _spec()
    from effv2_spec.resolve import resolve

    resolved = resolve(spec, 32)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    tensors = harness.conformance_tensors(spec, resolved, 0, x, "float64", StandInOracle)
    for p in resolved.params:
        t = tensors[p.name]
        assert np.all(np.isfinite(t)), p.name
        if p.role == "bn_running_var":
            assert np.all(t > 0) and not np.allclose(t, 1.0), p.name
        if p.role in ("bn_gamma", "bn_beta", "bn_running_mean"):
            assert np.std(t) > 0, p.name


def test_cli_check_exit_codes(monkeypatch):
    pytest.importorskip("torch")
    runner = CliRunner()
    monkeypatch.setattr(harness, "Oracle", StandInOracle)
    ok = runner.invoke(main, ["check", "efficientnetv2-nano", "--framework", "torch", "--image-size", "32", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["passed"] and data["framework"] == "torch" and data["dtype"] == "float64"
    table = runner.invoke(main, ["check", "efficientnetv2-nano", "--framework", "torch", "--image-size", "32",
                                 "--checks", "eval_logits,gradients"])
    assert table.exit_code == 0 and "PASS" in table.output and "gradients" in table.output

    def wrong(spec, resolved, dtype, seed):
        return StandInOracle(spec, resolved, dtype, seed, perturb={"eval_logits": 1e-3})

    monkeypatch.setattr(harness, "Oracle", wrong)
    bad = runner.invoke(main, ["check", "efficientnetv2-nano", "--framework", "torch", "--image-size", "32",
                               "--checks", "eval_logits"])
    assert bad.exit_code == 1 and "FAIL" in bad.output


def test_check_error_for_impossible_requests():
    pytest.importorskip("torch")
    with pytest.raises(CheckError, match="total stride"):
        run_check(_spec(), "torch", image_size=2, oracle_factory=StandInOracle)
    with pytest.raises(CheckError, match="unknown check"):
        run_check(_spec(), "torch", checks=("nope",), oracle_factory=StandInOracle)
    with pytest.raises(CheckError, match="unknown framework"):
        run_check(_spec(), "mxnet", oracle_factory=StandInOracle)


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 34913012224 bytes.")])
def test_cli_check_reports_a_framework_failure_in_one_line(monkeypatch, error):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(harness, "run_check", failing)
    result = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", "torch"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("efficientnetv2-nano: torch check failed: " + type(error).__name__)
    assert "--image-size" in lines[0]
