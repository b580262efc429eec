"""A run's record (metrics.jsonl) and its TensorBoard files: fields, values against independent
recomputations, continuation across a kill, --stop-at and --resume, a new run over an old one."""

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.special import logsumexp

from effv2_cli import main
from effv2_train.data import load_digits, split
from effv2_reference.train import Trainer, evaluate_with
from record_checks import assert_same_numbers, check_record, expected_log_steps, of_type, read_record
from test_train import REGS, RMS_EMA, SIZE, recipe, schedule, tiny_spec  # tests/reference is on sys.path

STEPS, STAGE_ENDS = 12, (4, 8, 12)


@pytest.fixture(scope="module")
def data():
    train_set, held = split(load_digits(SIZE))
    return train_set.subset(np.arange(160), "digits:160"), held.subset(np.arange(120), "digits:held")


def docs(ema=True):
    return tiny_spec(), schedule(STEPS, stages=3, regs=REGS, start=8), recipe(**(RMS_EMA if ema else {}))


def trainer(data, out, ema=True, **options):
    return Trainer(*docs(ema), *data, seed=3, out_dir=out, checkpoint_every=5, log_every=3, **options)


def independent_heldout(model, tensors, held, size):
    """top-1, top-5, mean cross-entropy from the oracle's eval logits, by SciPy and sorting."""
    from effv2_train.data.pipeline import to_input
    from effv2_reference.train import swapped_in

    with swapped_in(model, tensors):
        logits = model.forward(to_input(held.images, size, model.resolved, np.dtype("float32")),
                               training=False).astype(np.float64)
    order = np.argsort(-logits, axis=1, kind="stable")
    loss = logsumexp(logits, axis=1) - logits[np.arange(len(held)), held.labels]
    return ((order[:, 0] == held.labels).mean(), (order[:, :5] == held.labels[:, None]).any(axis=1).mean(),
            loss.mean())


def test_record_of_a_run_with_ema(data, tmp_path):
    run = trainer(data, tmp_path)
    run.run()
    lines = read_record(tmp_path / "metrics.jsonl")
    check_record(lines, run, framework="reference")
    assert [ln["step"] for ln in of_type(lines, "step")] == expected_log_steps(STEPS, 3, STAGE_ENDS, extra=(5, 10))
    assert len(of_type(lines, "run")) == 1 and not of_type(lines, "resume")
    assert [ln["image_size"] for ln in of_type(lines, "stage")] == [8, 12, 16]
    # the last stage's figures, recomputed from the final weights (raw and EMA) outside the loop
    last = of_type(lines, "stage")[-1]
    for prefix, tensors in (("", None), ("ema_", run.ema.shadow)):
        top1, top5, loss = independent_heldout(run.model, tensors, data[1], last["eval_size"])
        assert last[f"{prefix}heldout_top1"] == top1 and last[f"{prefix}heldout_top5"] == top5
        assert last[f"{prefix}heldout_loss"] == pytest.approx(loss, rel=1e-12)
    assert last["heldout_top1"] == evaluate_with(run.model, None, data[1], last["eval_size"])


def test_data_wait_share_measures_the_time_spent_in_the_loader(data, tmp_path, monkeypatch):
    from effv2_train.data.loader import BatchLoader

    delay, original = 0.03, BatchLoader.rows

    def slow_rows(self, step):
        time.sleep(delay)
        return original(self, step)

    monkeypatch.setattr(BatchLoader, "rows", slow_rows)
    run = trainer(data, tmp_path, ema=False)
    run.run(stop_at=6)
    for ln in of_type(read_record(tmp_path / "metrics.jsonl"), "step"):
        seconds = ln["steps"] * run.batch / ln["images_per_second"]  # the line's compute seconds
        assert delay * ln["steps"] <= ln["data_wait_share"] * seconds <= seconds, ln


def test_a_killed_run_resumes_without_duplicated_or_missing_steps(data, tmp_path):
    full = trainer(data, tmp_path / "full")
    full.run()

    class Kill(Exception):
        pass

    def kill_at_7(step, total, loss):
        if step == 7:
            raise Kill

    with pytest.raises(Kill):
        trainer(data, tmp_path / "cut").run(on_step=kill_at_7)
    record = tmp_path / "cut" / "metrics.jsonl"
    assert of_type(read_record(record), "step")[-1]["step"] == 6  # written after the checkpoint at 5
    resumed = trainer(data, tmp_path / "cut")
    resumed.resume()
    resumed.run()
    lines = read_record(record)
    check_record(lines, resumed, framework="reference")
    assert [ln["step"] for ln in of_type(lines, "resume")] == [5]
    # resume is bit-identical, so is every number of the record but the clock's
    without_resume = [ln for ln in lines if ln["type"] != "resume"]
    assert_same_numbers(read_record(tmp_path / "full" / "metrics.jsonl"), without_resume, rtol=0)
    # the clock continues: the resumed lines start after the kept ones
    resume_line = of_type(lines, "resume")[0]
    kept = [ln for ln in of_type(lines, "step") if ln["step"] <= 5]
    assert resume_line["wall_seconds"] == kept[-1]["wall_seconds"]


def test_a_new_run_over_an_old_one_keeps_the_old_record_until_its_first_checkpoint(data, tmp_path):
    old = trainer(data, tmp_path)
    old.run()
    before = (tmp_path / "metrics.jsonl").read_bytes()

    class Kill(Exception):
        pass

    def kill_at_2(step, total, loss):
        if step == 2:
            raise Kill

    with pytest.raises(Kill):  # a new run (as --overwrite) killed before its first checkpoint
        Trainer(*docs(), *data, seed=4, out_dir=tmp_path, checkpoint_every=5, log_every=1).run(on_step=kill_at_2)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
    new = Trainer(*docs(), *data, seed=4, out_dir=tmp_path, checkpoint_every=5, log_every=1)
    new.run()
    lines = read_record(tmp_path / "metrics.jsonl")
    check_record(lines, new, framework="reference")
    assert lines[0]["seed"] == 4 and [ln["step"] for ln in of_type(lines, "step")] == list(range(1, 13))
    assert not list(tmp_path.glob(".metrics.jsonl*"))


def test_a_run_without_ema_and_without_out_dir(data, tmp_path):
    run = trainer(data, tmp_path, ema=False)
    run.run()
    lines = read_record(tmp_path / "metrics.jsonl")
    check_record(lines, run, framework="reference")
    assert lines[0]["ema"] is False
    nowhere = trainer(data, None, ema=False)  # no folder: nothing written, the run unchanged
    nowhere.run()
    assert [h["loss"] for h in nowhere.history] == [h["loss"] for h in run.history]


# ---- the command line ----------------------------------------------------------------------------------
def write_docs(folder, mix_group=None):
    names = []
    spec, sched, training = docs()
    if mix_group is not None:  # a mix group inside one process's rows
        training = recipe(**RMS_EMA, augmentation={"random_resized_crop": None, "horizontal_flip": False,
                                                   "mix_group_size": mix_group})
    for name, doc in zip(("spec", "schedule", "training"), (spec, sched, training)):
        (folder / f"{name}.json").write_text(doc.model_dump_json())
        names.append(str(folder / f"{name}.json"))
    return names


def train_cli(tmp_path, out, *extra, mix_group=None):
    spec, sched, training = write_docs(tmp_path, mix_group)
    images, labels = load_digits(SIZE).images[:200], load_digits(SIZE).labels[:200]
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    return CliRunner().invoke(main, ["train", spec, "--schedule", sched, "--training", training, "--data",
                                     str(tmp_path / "d.npz"), "--out", str(out), "--seed", "2", "--workers", "0",
                                     "--nproc", "1", "--checkpoint-every", "5", "--log-every", "3", *map(str, extra)])


def tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_cli_stop_at_then_resume_with_tensorboard(tmp_path):
    out = tmp_path / "run"
    r = train_cli(tmp_path, out, "--stop-at", 7, "--tensorboard")
    assert r.exit_code == 0, r.output
    r = train_cli(tmp_path, out, "--resume", "--tensorboard")
    assert r.exit_code == 0, r.output
    lines = read_record(out / "metrics.jsonl")
    steps = [ln["step"] for ln in of_type(lines, "step")]
    assert steps == expected_log_steps(STEPS, 3, STAGE_ENDS, extra=(5, 7, 10))
    assert [ln["step"] for ln in of_type(lines, "resume")] == [7]
    assert sum(ln["steps"] for ln in of_type(lines, "step")) == STEPS
    # the console's stage lines and the checkpoint's history show the record's held-out figures
    from effv2_train.checkpoint import load_checkpoint

    history = load_checkpoint(out / "checkpoint.npz").meta["history"]
    stages = of_type(lines, "stage")
    assert [h["heldout_accuracy"] for h in history] == [s["ema_heldout_top1"] for s in stages]
    assert f"held-out {100 * stages[-1]['ema_heldout_top1']:.1f}%" in r.output
    # TensorBoard, read back by TensorBoard's own reader: one file, every scalar of the record once
    assert len(list((out / "tensorboard").iterdir())) == 1
    scalars = tensorboard_scalars(out / "tensorboard")
    assert scalars["step/loss"] == [(ln["step"], pytest.approx(ln["loss"], rel=1e-6)) for ln in of_type(lines, "step")]
    assert scalars["stage/ema_heldout_top1"] == [(s["step"], pytest.approx(s["ema_heldout_top1"], rel=1e-6))
                                                 for s in stages]
    assert scalars["step/regularizer/mixup_alpha"] == [
        (ln["step"], pytest.approx(ln["regularizers"]["mixup_alpha"], abs=1e-7)) for ln in of_type(lines, "step")]
    tags = {"step/" + k for k in ("stage", "image_size", "learning_rate", "loss", "train_accuracy",
                                  "images_per_second", "data_wait_share", "wall_seconds")}
    assert tags <= set(scalars) and "stage/heldout_top5" in scalars and "step/time" not in scalars


def test_cli_without_tensorboard_writes_no_event_files_and_removes_stale_ones(tmp_path):
    out = tmp_path / "run"
    assert train_cli(tmp_path, out, "--stop-at", 3, "--tensorboard").exit_code == 0
    assert len(list((out / "tensorboard").iterdir())) == 1
    r = train_cli(tmp_path, out, "--resume", "--stop-at", 5)
    assert r.exit_code == 0, r.output
    assert list((out / "tensorboard").iterdir()) == []  # they would disagree with the record from here on


def test_cli_two_oracle_processes_write_one_record(tmp_path):
    out = tmp_path / "run"
    r = train_cli(tmp_path, out, "--nproc", 2, "--steps", 6, "--stop-at", 4, "--eval-every", 3, mix_group=16)
    assert r.exit_code == 0, r.output
    lines = read_record(out / "metrics.jsonl")
    assert lines[0]["processes"] == 2 and lines[0]["total_steps"] == 6
    assert [ln["step"] for ln in of_type(lines, "step")] == [2, 3, 4]  # stage ends 2 and 4, log every 3
    # both processes evaluate their half of the held-out set at step 3; rank 0 writes the sum once
    evals = of_type(lines, "eval")
    assert [ln["step"] for ln in evals] == [3] and 0.0 <= evals[0]["heldout_top1"] <= 1.0
    assert all(set(ln) >= {"type", "step"} for ln in lines) and len(of_type(lines, "run")) == 1


def test_record_lines_are_valid_json_without_nan(data, tmp_path):
    run = trainer(data, tmp_path)
    run.run(stop_at=2)
    text = (tmp_path / "metrics.jsonl").read_text()
    for line in text.splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in the record"))


def test_event_file_checksums_are_crc32c():
    """Published check values; the masking is checked by TensorBoard's reader, which verifies every record."""
    from effv2_train.tensorboard import crc32c

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def test_eval_every_records_heldout_inside_stages_at_both_sizes(data, tmp_path):
    """`eval` lines at every 3rd step but the stage ends, each equal to an independent evaluation of the
    same weights at the stage's size and at the final size; a resumed run writes none twice; the plot
    reads them."""
    from effv2_train.plot import load_run

    snapshots = {}
    run = trainer(data, tmp_path, ema=False, eval_every=3)
    original = run._eval_line

    def spy(st):
        snapshots[run.step] = {k: v.copy() for k, v in run.model.state_dict().items()}
        original(st)

    run._eval_line = spy
    run.run(stop_at=7)
    resumed = trainer(data, tmp_path, ema=False, eval_every=3)
    resumed.resume()
    resumed._eval_line = lambda st: (snapshots.__setitem__(resumed.step, {
        k: v.copy() for k, v in resumed.model.state_dict().items()}), type(resumed)._eval_line(resumed, st))
    resumed.run()
    evals = of_type(read_record(tmp_path / "metrics.jsonl"), "eval")
    assert [ln["step"] for ln in evals] == [3, 6, 9]  # 12 is a stage end; 3, 6, 9 are inside stages
    for ln in evals:
        assert ln["weights"] == "raw" and ln["eval_size"] == 16
        for prefix, size in (("heldout_", ln["image_size"]), ("final_size_", 16)):
            top1, top5, loss = independent_heldout(resumed.model, snapshots[ln["step"]], data[1], size)
            assert ln[prefix + "top1"] == top1 and ln[prefix + "top5"] == top5
            assert ln[prefix + "loss"] == pytest.approx(loss, rel=1e-9)
    series = load_run(tmp_path)["evals"]
    assert series["step"] == [3, 6, 9] and series["final_size_top1"] == [ln["final_size_top1"] for ln in evals]
