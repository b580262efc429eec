"""Several oracle processes on one run (replicas.py, `train(processes=N)`, `effv2 train --nproc N`).

The collectives are checked against NumPy sums of what each process sent (and every process must
receive the same bits); the data-parallel oracle against the one-process oracle in float64 over a
two-stage run with every regulariser on, for the three ways BN groups can fall on processes (one
group over all of them, groups inside each, groups spanning some); failures must end the run with
one line, never a hang.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from effv2_adapters.train_check import check_schedule, check_training, compare_states
from effv2_train.checkpoint import load_checkpoint
from effv2_cli.train import _auto_processes
from effv2_train.data import load_digits, split
from effv2_train.plan import PlanError, TrainingPlan
from effv2_reference.replicas import ReplicaError, SharedGroup, run_replicas
from effv2_reference.train import Trainer, train
from effv2_cli import main
from effv2_spec.documents import parse_obj
from effv2_spec.presets import load as load_preset

SIZE = 24


# ---- the collectives ----------------------------------------------------------------------------
def _payload(rank: int, call: int, shape, dtype) -> np.ndarray:
    return np.random.default_rng([rank, call]).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_sums_equal_numpy_and_every_process_gets_the_same_bits(world, tmp_path):
    # (shape, dtype, span or None for all processes, sum or gather)
    calls = [((5,), np.float64, None, "sum"), ((3, 4), np.float32, None, "sum"), ((7,), np.float64, 2, "sum"),
             ((1,), np.int64, None, "sum"), ((2, 3), np.float32, 2, "gather"), ((4,), np.float64, world, "gather")]
    calls = [c for c in calls if c[2] is None or world % c[2] == 0]

    def rank_main(replica):
        got = []
        for i, (shape, dtype, span, op) in enumerate(calls * 3):  # more calls than the two slot buffers
            a = _payload(replica.rank, i, shape, dtype)
            if op == "gather":
                got.append(replica.group_gather(a, span))
            else:
                got.append(replica.all_sum(a) if span is None else replica.group_sum(a, span))
        got.append(replica.mean(np.full(3, float(replica.rank))))
        np.savez(tmp_path / f"rank{replica.rank}.npz", *got)
        return len(got)

    assert run_replicas(world, rank_main, capacity_bytes=256) == 3 * len(calls) + 1
    results = [np.load(tmp_path / f"rank{r}.npz") for r in range(world)]
    for i, (shape, dtype, span, op) in enumerate(calls * 3):
        for r in range(world):
            lo = 0 if span is None else r // span * span
            members = range(world) if span is None else range(lo, lo + span)
            got = results[r][f"arr_{i}"]
            if op == "gather":  # exactly what each member sent, in rank order
                assert np.array_equal(got, np.stack([_payload(q, i, shape, dtype) for q in members]))
                continue
            want = sum(_payload(q, i, shape, dtype).astype(np.float64) for q in members)
            assert got.dtype == dtype and got.shape == shape
            tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-14}
            assert np.allclose(got, want, **tol)
            if span is None:  # the same bits in every process: their weights stay identical
                assert got.tobytes() == results[0][f"arr_{i}"].tobytes()
    for r in range(world):
        assert np.array_equal(results[r][f"arr_{len(calls) * 3}"], np.full(3, (world - 1) / 2))


def test_a_message_larger_than_the_slots_is_refused():
    group = SharedGroup(2, capacity_bytes=64)
    with pytest.raises(ValueError, match="does not fit the 64-byte slots"):
        group.member(0).all_sum(np.zeros(9))
    with pytest.raises(ValueError, match="a span of 3 processes does not divide the 2"):
        group.member(0).group_sum(np.zeros(2), 3)


def _no_children_left():
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not multiprocessing.active_children()


@pytest.mark.parametrize("how", ["raises", "killed", "silent"])
def test_a_failing_child_ends_the_run_with_one_line(how):
    def rank_main(replica):
        replica.all_sum(np.ones(2))
        if replica.rank == 1:
            if how == "raises":
                raise ValueError("bad shard\nsecond line")
            if how == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(30)  # silent: outlives the timeout below
        replica.all_sum(np.ones(2))
        return "done"

    start = time.monotonic()
    with pytest.raises(ReplicaError) as info:
        run_replicas(2, rank_main, capacity_bytes=64, timeout_s=2.0)
    message = str(info.value)
    assert "\n" not in message
    assert {"raises": "process 1 stopped: ValueError: bad shard", "killed": "another process of the run died",
            "silent": "process(es) 1 sent nothing for"}[how] in message
    assert time.monotonic() - start < 20
    assert _no_children_left()


def test_a_failing_first_process_stops_the_others():
    def rank_main(replica):
        if replica.rank == 0:
            raise KeyError("rank zero")
        replica.all_sum(np.ones(2))  # would wait forever for rank 0

    with pytest.raises(KeyError, match="rank zero"):
        run_replicas(3, rank_main, capacity_bytes=64, timeout_s=60.0)
    assert _no_children_left()


# ---- the data-parallel oracle equals the one-process oracle -------------------------------------------
@pytest.fixture(scope="module")
def data():
    train_set, held = split(load_digits(SIZE))
    return train_set.subset(np.arange(48), "digits:48"), held.subset(np.arange(24), "digits:held")


def _spec():
    doc = json.loads(load_preset("efficientnetv2-nano").model_dump_json())
    doc["conventions"]["stochastic_depth"]["rate"] = 0.2
    return parse_obj(doc)


def _docs(optimizer: str, batch: int, group: int | None, mix: int | None = None):
    return _spec(), parse_obj(check_schedule(6, SIZE)), parse_obj(check_training(optimizer, batch, group, mix))


def _state(trainer) -> dict:
    model, opt, ema = trainer.backend.state()
    return {"model": model, "optimizer": opt, "ema": ema}


def _run_processes(docs, data, world: int, tmp_path, **run) -> tuple[dict, list]:
    """Rank 0's state and history of a `world`-process run; asserts every process ends bit-identical."""
    def rank_main(replica):
        trainer = Trainer(*docs, *data, seed=1, dtype="float64", checkpoint_every=None, replica=replica)
        trainer.run(**run)
        state = _state(trainer)
        flat = {f"{p}/{k}": v for p, d in state.items() for k, v in d.items()}
        np.savez(tmp_path / f"rank{replica.rank}.npz", **flat)
        return state, trainer.history

    state, history = run_replicas(world, rank_main, capacity_bytes=4 << 20, timeout_s=300)
    files = [np.load(tmp_path / f"rank{r}.npz") for r in range(world)]
    for f in files[1:]:
        assert all(f[k].tobytes() == files[0][k].tobytes() for k in files[0].files)
    return state, history


@pytest.mark.parametrize("optimizer,batch,group,world", [
    ("sgd", 16, None, 2),  # one BN group over both processes (SyncBN)
    ("rmsprop", 16, 4, 2),  # groups inside each process (plain DDP): running statistics averaged over them
    ("sgd", 16, 8, 4),  # each group spans two of four processes
])
def test_processes_equal_one_oracle_process(data, tmp_path, optimizer, batch, group, world):
    docs = _docs(optimizer, batch, group, mix=4)
    one = Trainer(*docs, *data, seed=1, dtype="float64", checkpoint_every=None)
    one.run()
    state, history = _run_processes(docs, data, world, tmp_path)
    parts, problems = compare_states(_state(one), state, "float64")
    assert not problems, problems
    assert {p.part for p in parts} == {"model", "optimizer", "ema"}
    for p in parts:
        assert p.worst <= 1e-11, (p.part, p.worst_name, p.worst)  # measured: 2e-14 - 6e-13
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in one.history], rel=1e-10)
    assert [h["heldout_accuracy"] for h in history] == [h["heldout_accuracy"] for h in one.history]
    assert [h["image_size"] for h in history] == [16, 24]
    # the run did something: BN statistics and weights moved away from their start
    start = Trainer(*docs, *data, seed=1, dtype="float64", checkpoint_every=None)
    moved = [k for k, v in state["model"].items() if not np.allclose(v, _state(start)["model"][k])]
    assert len(moved) > 0.9 * len(state["model"])


def test_a_run_stopped_in_two_processes_resumes_in_one(data, tmp_path):
    docs = _docs("rmsprop", 16, None, mix=8)
    full = Trainer(*docs, *data, seed=1, dtype="float64", checkpoint_every=None)
    full.run()

    def first_part(replica):
        t = Trainer(*docs, *data, seed=1, dtype="float64", out_dir=tmp_path / "run", checkpoint_every=None,
                    replica=replica)
        t.run(stop_at=4)

    run_replicas(2, first_part, capacity_bytes=4 << 20, timeout_s=300)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz").meta["processes"] == 2
    rest = Trainer(*docs, *data, seed=1, dtype="float64", out_dir=tmp_path / "run", checkpoint_every=None)
    rest.resume()
    assert rest.step == 4
    rest.run()
    parts, problems = compare_states(_state(full), _state(rest), "float64")
    assert not problems and all(p.worst <= 1e-10 for p in parts), parts


def test_train_with_processes_matches_float32_closely(data):
    docs = _docs("sgd", 16, None, mix=8)
    results = [train(*docs, *data, seed=1, dtype="float32", checkpoint_every=None, processes=n) for n in (1, 2)]
    losses = [[h["loss"] for h in r.stages] for r in results]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert results[1].extra["processes"] == 2 and results[0].extra["processes"] == 1


@pytest.mark.parametrize("batch,group,mix,world", [(24, 4, 2, 4), (24, 12, 4, 3)])
def test_layouts_the_plan_cannot_take_are_refused(data, batch, group, mix, world):
    """Groups of 4 rows cannot sit in shards of 6; groups of 12 cannot be made of shards of 8."""
    docs = _docs("sgd", batch, group, mix)
    with pytest.raises(PlanError, match=f"a group of {group} samples"):
        run_replicas(world, lambda r: Trainer(*docs, *data, seed=1, checkpoint_every=None, replica=r),
                     capacity_bytes=4 << 20, timeout_s=60)
    assert _no_children_left()


# ---- the command line -------------------------------------------------------------------------
def _plan(batch=64, steps=1200, group=None, mix=8):
    docs = _docs("sgd", batch, group, mix)
    sched = json.loads(docs[1].model_dump_json())
    sched["total_steps"] = steps
    return TrainingPlan(docs[0], parse_obj(sched), docs[2], 1000, seed=0)


@pytest.mark.parametrize("cores,batch,steps,group,mix,want", [
    (2, 64, 1200, None, 8, 2),
    (16, 64, 1200, None, 8, 4),  # at most 4, and 16+ rows each
    (16, 32, 1200, None, 8, 2),
    (2, 64, 100, None, 8, 1),  # short runs stay in one process
    (1, 64, 1200, None, 8, 1),
    (4, 64, 1200, None, 32, 2),  # a mix group of 32 fits two shards, not four
    (4, 48, 1200, 12, 4, 2),  # 4 leave 12 rows each (< 16); 3 leave 16, which groups of 12 do not divide
])
def test_auto_process_count(monkeypatch, cores, batch, steps, group, mix, want):
    monkeypatch.setattr("effv2_cli.train._cores", lambda: cores)
    assert _auto_processes(_plan(batch, steps, group, mix)) == want


@given(value=st.text(max_size=6).filter(lambda s: s.strip().lower() != "auto"
                                         and not (s.strip().isdigit() and int(s.strip()) >= 1)))
def test_bad_nproc_values_exit_2_naming_the_option(value):
    result = CliRunner().invoke(main, ["train", "--nproc", value, "--steps", "1"])
    assert result.exit_code == 2 and "--nproc" in result.output and "Traceback" not in result.output


def test_nproc_belongs_to_the_oracle():
    result = CliRunner().invoke(main, ["train", "--framework", "torch", "--nproc", "2", "--steps", "1"])
    assert result.exit_code == 2 and "--nproc: only with --framework reference" in result.output


def test_cli_two_processes(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--nproc", "2", "--steps", "6", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["processes"] == 2 and payload["steps"] == 6
    assert "reference x 2 processes" in result.stderr
    assert (out / "weights.safetensors").exists()


def test_cli_refuses_layouts_before_starting_processes(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the default --out, runs/<spec>, must not depend on the caller's folder
    monkeypatch.setattr("effv2_cli.train._cores", lambda: 8)
    result = CliRunner().invoke(main, ["train", "--nproc", "3", "--steps", "2"])
    assert result.exit_code == 1
    assert "--nproc 3: a batch of 64 cannot be split into 3 equal parts" in result.output
    monkeypatch.setattr("effv2_cli.train._cores", lambda: 2)
    result = CliRunner().invoke(main, ["train", "--nproc", "4", "--steps", "2"])
    assert result.exit_code == 2 and "--nproc 4: this machine has 2 cores" in result.output
    assert not multiprocessing.active_children()


def test_publish_copies_the_message_then_raises_the_number_and_polls_a_bounded_time():
    """The compiled half of an exchange (kernels/runtime/fence.py): the message lands in the slot, this rank's
    number becomes k, and the poll answers False (not a hang) while another rank is behind, True once not."""
    from effv2_reference.kernels.runtime.fence import poll_all_reached, publish_and_poll

    slot, seq = np.zeros(16, np.uint8), np.array([3, 2, 3], np.int64)
    message = np.arange(1, 9, dtype=np.uint8)
    assert not publish_and_poll(slot, message, seq, 1, 4, 1000)  # ranks 0 and 2 are at 3
    assert slot[:8].tolist() == message.tolist() and slot[8:].tolist() == [0] * 8
    assert seq.tolist() == [3, 4, 3]
    seq[[0, 2]] = 4
    assert poll_all_reached(seq, 4, 1) and not poll_all_reached(seq, 5, 1000)
    assert not poll_all_reached(seq, 4, 0)  # no poll, no answer
