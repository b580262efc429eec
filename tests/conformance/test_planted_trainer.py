"""`effv2 check --train-steps` on trainers with a planted error (tests/conformance/planted_trainer.py): a trainer
that never clips fails the 'clipped-frozen-bn' recipe, one without label smoothing the default recipe, each naming
the states and tensors that differ from the oracle's and the recipe's fields; the recipes' field lists name real
fields of the training document, each set (not off) in that recipe's document."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from effv2_adapters.train_check import RECIPE_FIELDS, RECIPES, check_training
from effv2_cli import main
from effv2_spec.documents import parse_obj

HERE = Path(__file__).resolve().parent


@pytest.fixture
def plugin_path(monkeypatch):
    """planted_trainer importable here and in the check's `effv2 train` subprocesses."""
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))


def train_check(planted: str, *args: str):
    return CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", f"planted_trainer:{planted}",
                                     "--train-steps", "2", "--image-size", "16", *args])


def test_a_trainer_that_never_clips_fails_the_clipped_recipe(plugin_path):
    r = train_check("TrainerIgnoresClipping", "--recipe", "clipped-frozen-bn", "--optimizer", "sgd", "--json")
    assert r.exit_code == 1, r.output
    report = json.loads(r.stdout)
    parts = {p["part"]: p for p in report["parts"]}
    # every state differs by far more than rounding; the worst tensors are named
    assert set(parts) == {"model", "optimizer", "ema"} and all(p["worst"] > 1e-3 for p in parts.values()), parts
    assert parts["optimizer"]["worst_name"].startswith("momentum/")  # SGD's canonical slot, then the tensor
    assert report["recipe"] == "clipped-frozen-bn" and "gradient_clip_norm" in report["recipe_fields"]
    (line,) = report["problems"]
    assert line.startswith("model, optimizer, ema: the planted_trainer:TrainerIgnoresClipping trainer ends "
                           "elsewhere than the oracle; it does not follow a field of recipe 'clipped-frozen-bn': ")
    assert "gradient_clip_norm" in line


def test_a_trainer_without_label_smoothing_fails_the_default_recipe(plugin_path):
    r = train_check("TrainerIgnoresLabelSmoothing")
    assert r.exit_code == 1, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "FAIL"
    rows = {cells[0]: cells[1:] for cells in (_cells(ln) for ln in lines) if cells and cells[0] in (
        "model", "optimizer", "ema")}
    assert set(rows) == {"model", "optimizer", "ema"} and all(row[-1] == "FAIL" for row in rows.values()), rows
    assert all(float(row[2]) > 1e-3 for row in rows.values())  # rel err, far from rounding
    assert rows["optimizer"][1].split("/")[0] in ("ms", "mom")  # RMSProp's slots name the worst state tensor
    assert "does not follow a field of recipe 'default'" in r.stdout and "label_smoothing" in r.stdout


def _cells(line: str) -> list[str]:
    """The cells of a table row ('│ a │ b │' -> ['a', 'b'])."""
    return [c.strip() for c in line.strip().strip("│┃").split("│")] if line.lstrip().startswith("│") else []


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_recipe_sets_the_fields_it_names(recipe):
    """Every field a recipe lists is a field of the training document, and on in the recipe's document: not
    null, 0 or False (a trainer that drops it then ends elsewhere)."""
    assert set(RECIPE_FIELDS) == set(RECIPES)
    doc = parse_obj(check_training("sgd", 16, 8, recipe=recipe))
    assert doc.label_smoothing > 0 and doc.ema is not None
    for path in RECIPE_FIELDS[recipe]:
        value = doc
        for name in path.split("."):
            value = getattr(value, name)  # AttributeError: a field the schema does not have
        assert value not in (None, 0, 0.0, False), (recipe, path, value)
    # the EMA rule: with the num_updates warm-up every step of a short run has its own decay, below `decay`
    assert doc.ema.num_updates_warmup and (1 + 4) / (10 + 4) < doc.ema.decay
