"""Checks of a run's record (metrics.jsonl) shared by the oracle, torch and jax tests.

The expected key sets are written out here, not taken from effv2_train.record, so a key that
disappears from the writer fails the tests instead of silently changing the expectation."""

import json
import math

import numpy as np

RUN_KEYS = {"type", "version", "step", "time", "started", "spec", "schedule", "training", "data", "seed", "dtype",
            "framework", "processes", "train_images", "heldout_images", "batch_size", "steps_per_epoch",
            "total_steps", "eval_size", "ema", "log_every", "stages"}
RESUME_KEYS = {"type", "step", "time", "framework", "processes", "wall_seconds"}
STEP_KEYS = {"type", "step", "time", "steps", "stage", "image_size", "learning_rate", "loss", "train_accuracy",
             "images_per_second", "data_wait_share", "wall_seconds", "regularizers"}
STAGE_KEYS = {"type", "step", "time", "stage", "image_size", "eval_size", "start_step", "end_step", "steps",
              "regularizers", "train_loss", "train_accuracy", "heldout_loss", "heldout_top1", "heldout_top5",
              "ema_heldout_loss", "ema_heldout_top1", "ema_heldout_top5", "learning_rate_end", "images_per_second",
              "stage_seconds", "wall_seconds"}
KEYS = {"run": RUN_KEYS, "resume": RESUME_KEYS, "step": STEP_KEYS, "stage": STAGE_KEYS}


def read_record(path):
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def of_type(lines, kind):
    return [ln for ln in lines if ln["type"] == kind]


def expected_log_steps(total, log_every, stage_ends, extra=()):
    """Where `step` lines fall: every log_every steps, at stage ends, checkpoints and stops (`extra`)."""
    return sorted({s for s in range(1, total + 1) if s % log_every == 0} | set(stage_ends) | set(extra))


def check_record(lines, loop, *, framework, processes=1):
    """Every line has its type's keys; the step lines cover steps 1..loop.step exactly once; the numbers are
    sane; the stage lines repeat the loop's history (what checkpoints and the console report)."""
    assert lines[0]["type"] == "run"
    for ln in lines:
        assert set(ln) == KEYS[ln["type"]], (ln["type"], set(ln) ^ KEYS[ln["type"]])
    head = lines[0]
    assert (head["framework"], head["processes"], head["total_steps"]) == (framework, processes, loop.total_steps)
    assert (head["train_images"], head["heldout_images"]) == (len(loop.train_data), len(loop.heldout))
    assert [s["image_size"] for s in head["stages"]] == [s.image_size for s in loop.stages]
    steps = of_type(lines, "step")
    covered = 0
    for ln in steps:
        assert ln["step"] - ln["steps"] == covered, (ln["step"], ln["steps"], covered)  # no gap, no overlap
        covered = ln["step"]
        stage = next(s for s in loop.stages if s.start_step < ln["step"] <= s.end_step)
        assert (ln["stage"], ln["image_size"]) == (stage.index, stage.image_size)
        assert ln["regularizers"] == dict(stage.regularizers)
        assert ln["learning_rate"] == loop.plan.learning_rate(ln["step"] - 1)
        assert math.isfinite(ln["loss"]) and ln["loss"] > 0
        assert 0 <= ln["train_accuracy"] <= 1 and 0 <= ln["data_wait_share"] <= 1
        assert ln["images_per_second"] > 0
    assert covered == loop.step
    walls = [ln["wall_seconds"] for ln in lines if "wall_seconds" in ln]
    assert walls == sorted(walls) and walls[-1] > 0
    stages = of_type(lines, "stage")
    assert len(stages) == len(loop.history)
    for rec, hist in zip(stages, loop.history):
        assert rec["step"] == rec["end_step"] == hist["end_step"]
        for key in ("stage", "image_size", "eval_size", "start_step", "steps", "regularizers", "train_accuracy",
                    "learning_rate_end", "images_per_second"):
            assert rec[key] == hist[key], key
        assert (rec["train_loss"], rec["stage_seconds"]) == (hist["loss"], hist["seconds"])
        reported = rec["ema_heldout_top1"] if head["ema"] else rec["heldout_top1"]
        assert reported == hist["heldout_accuracy"]
        for prefix in ("", "ema_") if head["ema"] else ("",):
            assert 0 <= rec[f"{prefix}heldout_top1"] <= rec[f"{prefix}heldout_top5"] <= 1
            assert math.isfinite(rec[f"{prefix}heldout_loss"]) and rec[f"{prefix}heldout_loss"] > 0
        if not head["ema"]:
            assert rec["ema_heldout_top1"] is rec["ema_heldout_loss"] is None
        # the stage's mean training loss is the step-weighted mean of its step lines
        own = [ln for ln in steps if rec["start_step"] < ln["step"] <= rec["end_step"]]
        assert np.isclose(sum(ln["loss"] * ln["steps"] for ln in own) / rec["steps"], rec["train_loss"], rtol=1e-12)


def assert_same_numbers(a, b, rtol):
    """Two records of the same run (other frameworks): same lines, same losses and held-out figures."""
    assert [(ln["type"], ln["step"]) for ln in a] == [(ln["type"], ln["step"]) for ln in b]
    for x, y in zip(a, b):
        for key in ("loss", "train_accuracy", "learning_rate", "train_loss", "heldout_loss", "heldout_top1",
                    "heldout_top5", "ema_heldout_loss", "ema_heldout_top1", "ema_heldout_top5"):
            if key in x and x[key] is not None:
                assert np.isclose(x[key], y[key], rtol=rtol, atol=1e-12), (x["type"], x["step"], key, x[key], y[key])
