"""Training, prediction and evaluation are adapter capabilities found through the one registry: a
third-party adapter named "module:Class" trains, predicts and evaluates as the built-in one it wraps
(same checkpoint, same logits); one without the `trainer` capability and an unknown name are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from effv2_cli import main
from effv2_spec.weights import load_weights

pytest.importorskip("torch")
PLUGIN = "training_plugin:RenamedTorch"
NO_TRAINER = "functional_torch_adapter:FunctionalTorch"


@pytest.fixture(autouse=True)
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "docs" / "examples"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_plugin_trains_predicts_and_evaluates_as_the_adapter_it_wraps(tmp_path):
    common = ["--steps", 2, "--dtype", "float64", "--checkpoint-every", 0, "--json"]
    for name, out in ((PLUGIN, "plugin"), ("torch", "torch")):
        r = run("train", "--framework", name, "--out", tmp_path / out, *common)
        assert r.exit_code == 0, r.output
        assert f"float64, {name}" in r.stderr  # the header names the framework as given
    _, plugin = load_weights(tmp_path / "plugin" / "weights.safetensors")
    _, builtin = load_weights(tmp_path / "torch" / "weights.safetensors")
    assert plugin.keys() == builtin.keys() and all(np.array_equal(plugin[k], builtin[k]) for k in plugin)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    weights = tmp_path / "plugin" / "weights.safetensors"
    answers = []
    for name in (PLUGIN, "torch"):
        r = run("predict", "efficientnetv2-nano", "--weights", weights, image, "--framework", name, "--json")
        assert r.exit_code == 0, r.output
        answers.append(json.loads(r.stdout)["results"])
    assert answers[0] == answers[1]


def test_an_adapter_that_cannot_train_and_an_unknown_name_are_refused(tmp_path):
    r = run("train", "--framework", NO_TRAINER, "--out", tmp_path / "o", "--steps", 1)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip() == f"--framework {NO_TRAINER}: its adapter has no `trainer` capability (it can be " \
                               "checked, not trained)"
    r = run("train", "--framework", "no-such-backend", "--out", tmp_path / "o", "--steps", 1)
    assert r.exit_code == 2 and "no-such-backend" in r.output and "Traceback" not in r.output
    r = run("predict", "efficientnetv2-nano", "--weights", tmp_path / "w", tmp_path / "x.png", "--framework", "nope")
    assert r.exit_code == 2 and "nope" in r.output


def test_check_train_steps_runs_a_plugin_trainer_against_the_oracle(monkeypatch):
    here = str(Path(__file__).parent)  # the check's runs are subprocesses: the plug-in is found on their path
    monkeypatch.setenv("PYTHONPATH", here + ":" + __import__("os").environ.get("PYTHONPATH", ""))
    r = run("check", "efficientnetv2-nano", "--framework", PLUGIN, "--train-steps", 2, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["framework"] == PLUGIN and report["passed"] is True, report
    r = run("check", "efficientnetv2-nano", "--framework", NO_TRAINER, "--train-steps", 2)
    assert r.exit_code != 0 and "no `trainer` capability" in r.output
