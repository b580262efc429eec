"""The conformance harness (effv2_adapters.conformance) and `effv2 check`: its own mechanics.

The harness must report agreement when there is agreement and catch any disagreement. Its
mechanics are tested here with torch against torch (one side perturbed), so they do not depend
on any one backend being right; the oracle-vs-backend checks live in tests/conformance.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from effv2_adapters import conformance
from effv2_adapters import conformance as harness
from effv2_adapters.conformance import CHECKS, CheckError, gradient_scales, rel_err, run_check, unit_of
from effv2_spec.architecture import ArchitectureSpec
from effv2_cli import main
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
    (["check", "efficientnetv2-nano", "--framework", "torch", "--image-size", "3"],
     "--image-size: must be >= the network's total stride 8 (got 3)"),
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
    result = runner.invoke(main, ["generate", "efficientnetv2-nano", "--framework", "mxnet",
                                  "-o", str(tmp_path / "m.py")])
    assert result.exit_code == 2 and "unknown framework" in result.output  # a usage error
    result = runner.invoke(main, ["generate", "nope", "--framework", "torch"])
    assert result.exit_code == 1 and "no such file or preset" in result.output
    assert not (tmp_path / "m.py").exists()


# ---- mechanics: torch against torch, one side perturbed ---------------------------------------------
class Perturbed:
    """The torch adapter with one check's output nudged by a relative `amount` (the harness must see it)."""

    name = "perturbed-torch"

    def __init__(self, check: str = "", amount: float = 0.0):
        from effv2_adapters.torch.adapter import TorchAdapter

        self.inner, self.check, self.amount = TorchAdapter(), check, amount

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def forward(self, model, x, *, training, masks=None):
        out = self.inner.forward(model, x, training=training, masks=masks)
        return out * (1 + self.amount) if self.check == ("train_logits" if training else "eval_logits") else out

    def forward_backward(self, model, x, dlogits, *, masks=None):
        logits, grads = self.inner.forward_backward(model, x, dlogits, masks=masks)
        if self.check == "gradients":
            grads["classifier.weight"] = grads["classifier.weight"] * (1 + self.amount)
        if self.check == "train_logits":
            logits = logits * (1 + self.amount)
        return logits, grads

    def optimizer_steps(self, tensors, grads_per_step, config, lrs, resolved):
        out = self.inner.optimizer_steps(tensors, grads_per_step, config, lrs, resolved)
        if config.optimizer.type == self.check:
            out["stem.conv.weight"] = out["stem.conv.weight"] + self.amount
        return out


class NoOptimizer:
    """A backend with only the four required methods (the torch adapter's)."""

    name = "no-optimizer"

    def __init__(self):
        from effv2_adapters.torch.adapter import TorchAdapter

        inner = TorchAdapter()
        self.build, self.forward, self.forward_backward = inner.build, inner.forward, inner.forward_backward
        self.export_tensors = inner.export_tensors


def _spec() -> ArchitectureSpec:
    doc = json.loads(load_architecture("efficientnetv2-nano").model_dump_json())
    doc["head"]["dropout"] = 0.5
    doc["conventions"]["stochastic_depth"]["rate"] = 0.5
    return parse_obj(doc, ArchitectureSpec)


def test_run_check_agreement_and_report():
    pytest.importorskip("torch")
    report = run_check(_spec(), "torch", dtype="float64", image_size=33, batch=3, seed=1, baseline="torch")
    assert report.passed, report.to_dict(per_tensor=False)
    assert [c.check for c in report.checks] == list(CHECKS) and report.baseline == "torch"
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] and data["image_size"] == [33, 33] and data["batch"] == 3 and data["not_run"] == []
    by_check = {c["check"]: c for c in data["checks"]}
    n_trainable = sum(1 for t in data["tensors"] if t["check"] == "gradients")
    assert by_check["gradients"]["tensors"] == n_trainable > 10
    from effv2_spec.resolve import resolve

    assert by_check["running_stats"]["tensors"] == len(resolve(_spec()).buffers())
    assert all(t["rel_err"] <= 1e-9 for t in data["tensors"])


@pytest.mark.parametrize("check", ["eval_logits", "train_logits", "gradients", "sgd", "rmsprop"])
def test_run_check_catches_disagreement(check):
    pytest.importorskip("torch")
    report = run_check(_spec(), "perturbed", image_size=32, checks=(check,), adapter=Perturbed(check, 1e-6),
                       baseline="torch")
    assert not report.passed
    assert report.checks[0].worst_rel_err > 1e-9 and report.checks[0].status == "failed"


def test_a_missing_capability_is_reported_not_run_never_passed():
    pytest.importorskip("torch")
    report = run_check(_spec(), "no-optimizer", image_size=32, adapter=NoOptimizer(), baseline="torch")
    status = {c.check: c.status for c in report.checks}
    optimizer_checks = ("sgd", "rmsprop", "adamw", *harness.FIELD_CHECKS)
    assert status == {"eval_logits": "passed", "train_logits": "passed", "gradients": "passed",
                      "running_stats": "passed", **{c: "not run" for c in optimizer_checks}}
    assert all(c.passed is None and "capability missing" in c.reason for c in report.not_run)
    assert report.passed  # every check that ran passed; the report names what did not run
    assert harness.verdict(report).endswith(f"({len(optimizer_checks)} check(s) not run: capability missing: "
                                            f"{', '.join(optimizer_checks)})")
    only = run_check(_spec(), "no-optimizer", image_size=32, adapter=NoOptimizer(), baseline="torch", checks=("sgd",))
    assert not only.passed and only.not_run  # nothing ran: never a pass


def test_the_adapter_protocol_is_checked_at_runtime():
    pytest.importorskip("torch")
    from effv2_adapters.conformance import Adapter, capabilities
    from effv2_adapters.registry import get_adapter

    for name in ("reference", "torch"):
        adapter = get_adapter(name)
        assert isinstance(adapter, Adapter), name
    assert capabilities(get_adapter("torch")) == {"optimizer", "source", "training"}
    assert capabilities(get_adapter("reference")) == {"optimizer"}
    assert not isinstance(object(), Adapter)
    with pytest.raises(CheckError, match="not an effv2 adapter: it lacks name, build, forward"):
        run_check(_spec(), "x", adapter=object(), image_size=32)


def test_calibrated_weights_make_eval_mode_non_trivial():
    pytest.importorskip("torch")
    from effv2_adapters.torch.adapter import TorchAdapter
    from effv2_spec.resolve import resolve

    spec = _spec()
    resolved = resolve(spec, 32)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    tensors = harness.conformance_tensors(spec, resolved, 0, x, "float64", TorchAdapter())
    for p in resolved.params:
        t = tensors[p.name]
        assert np.all(np.isfinite(t)), p.name
        if p.role == "bn_running_var":
            assert np.all(t > 0) and not np.allclose(t, 1.0), p.name
        if p.role in ("bn_gamma", "bn_beta", "bn_running_mean"):
            assert np.std(t) > 0, p.name


def test_cli_check_exit_codes():
    pytest.importorskip("torch")
    runner = CliRunner()
    base = ["check", "efficientnetv2-nano", "--image-size", "32", "--against", "torch"]
    ok = runner.invoke(main, [*base, "--framework", "torch", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["passed"] and (data["framework"], data["baseline"], data["dtype"]) == ("torch", "torch", "float64")
    table = runner.invoke(main, [*base, "--framework", "torch", "--checks", "eval_logits,gradients"])
    assert table.exit_code == 0 and "PASS" in table.output and "gradients" in table.output
    bad = runner.invoke(main, [*base, "--framework", "test_check_harness:WrongEval", "--checks", "eval_logits"])
    assert bad.exit_code == 1 and "FAIL: eval_logits worst tensor logits" in bad.output, bad.output


class WrongEval(Perturbed):
    def __init__(self):
        super().__init__("eval_logits", 1e-3)


def test_check_error_for_impossible_requests():
    pytest.importorskip("torch")
    with pytest.raises(CheckError, match="total stride"):
        run_check(_spec(), "torch", image_size=2)
    with pytest.raises(CheckError, match="unknown check"):
        run_check(_spec(), "torch", checks=("nope",))
    with pytest.raises(CheckError, match="unknown framework"):
        run_check(_spec(), "mxnet")
    with pytest.raises(CheckError, match="has no attribute 'Nope'"):
        run_check(_spec(), "effv2_adapters.oracle:Nope", image_size=32)


@pytest.mark.parametrize("error", [MemoryError(),
                                   RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 34913012224 bytes.")])
def test_cli_check_reports_a_framework_failure_in_one_line(monkeypatch, error):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(conformance, "run_check", failing)
    result = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", "torch"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("efficientnetv2-nano: torch check failed: " + type(error).__name__)
    assert "--image-size" in lines[0]


def test_generate_with_a_backend_that_cannot_emit_source():
    result = CliRunner().invoke(main, ["generate", "efficientnetv2-nano", "--framework", "reference"])
    assert result.exit_code == 1 and "cannot emit source" in result.output and "Traceback" not in result.output
