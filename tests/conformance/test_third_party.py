"""A backend that lives outside the package (docs/examples/functional_torch_adapter.py), loaded by
"module:Class" or through the `effv2.adapters` entry-point group, checked like a built-in one; and
the same adapter with a planted error (BN eps 1e-5 instead of the spec's 1e-3) caught by name."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from effv2_adapters.conformance import FIELD_CHECKS
from effv2_cli import main

pytest.importorskip("torch")
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
GOOD = "functional_torch_adapter:FunctionalTorch"
PLANTED = "planted_adapter:WrongEps"


@pytest.fixture(autouse=True)
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # where a user's own module would be: on sys.path, not installed
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_check_passes_and_reports_the_missing_capability():
    result = run("check", "efficientnetv2-nano", "--framework", GOOD, "--image-size", 33, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    status = {c["check"]: c["status"] for c in report["checks"]}
    optimizer_checks = ["sgd", "rmsprop", "adamw", *FIELD_CHECKS]
    assert status == {"eval_logits": "passed", "train_logits": "passed", "gradients": "passed",
                      "running_stats": "passed", **{c: "not run" for c in optimizer_checks}}
    assert report["not_run"] == optimizer_checks and report["baseline"] == "reference"
    assert all(c["passed"] is None and c["worst_rel_err"] is None for c in report["checks"] if c["status"] == "not run")
    assert max(t["rel_err"] for t in report["tensors"]) < 1e-9


def test_check_names_the_tensor_of_a_planted_error():
    result = run("check", "efficientnetv2-nano", "--framework", PLANTED, "--image-size", 33, "--checks",
                 "eval_logits,gradients,running_stats")
    assert result.exit_code == 1
    verdict = result.output.strip().splitlines()[-1]
    assert verdict.startswith("FAIL: eval_logits worst tensor logits") and "gradients worst tensor blocks." in verdict


def test_conformance_passes(tmp_path):
    result = run("conformance", "--framework", GOOD, "--examples", 3, "--seed", 2, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("PASS") and not list(tmp_path.iterdir())


def test_conformance_shrinks_a_planted_error_and_the_replay_command_reproduces_it(tmp_path):
    result = run("conformance", "--framework", PLANTED, "--examples", 2, "--out", tmp_path)
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("FAIL: ") and "eval_logits: logits rel err" in lines[0]
    record = json.loads((tmp_path / "conformance-failure.json").read_text())
    spec = json.loads((tmp_path / "conformance-failure.spec.json").read_text())
    assert record["spec"] == spec and len(spec["stages"]) == 1  # shrunk to one stage
    replay = shlex.split(lines[-1].removeprefix("replay: "))
    assert replay[:2] == ["effv2", "check"] and replay == shlex.split(record["replay"])
    again = run(*replay[1:])
    assert again.exit_code == 1 and "FAIL: eval_logits worst tensor logits" in again.output


def test_an_installed_plugin_registers_a_name(tmp_path, monkeypatch):
    """A package that declares [project.entry-points."effv2.adapters"] functional = "...:FunctionalTorch"."""
    from effv2_adapters import registry

    dist = tmp_path / "effv2_functional-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: effv2-functional\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[effv2.adapters]\nfunctional = {GOOD}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "functional" in registry.framework_names()
    assert type(registry.get_adapter("functional")).__name__ == "FunctionalTorch"
    result = run("check", "efficientnetv2-nano", "--framework", "functional", "--image-size", 33, "--checks",
                 "eval_logits")
    assert result.exit_code == 0 and "PASS" in result.output, result.output


def test_bad_module_class_is_one_line():
    for target, message in [("functional_torch_adapter:Nope", "has no attribute 'Nope'"),
                            ("no_such_module_x:Adapter", "cannot be imported"),
                            ("json:dumps", "not an effv2 adapter")]:
        result = run("check", "efficientnetv2-nano", "--framework", target, "--checks", "eval_logits")
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
