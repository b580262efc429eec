"""The PyTorch trainer against the oracle: same JSON and seed, same final state (float64, <= 1e-9),
in one process, under torchrun with 2 gloo processes (BN groups inside and across processes),
across a resume in the other framework; and its one-line refusals."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from asserts import assert_same_states, trainer_states
from effv2_cli import main
from effv2_spec.documents import parse_obj
from effv2_spec.presets import load as load_preset
from effv2_train.data import load_digits, split
from effv2_reference.train import Trainer
from effv2_train.trainloop import ProgressiveLoop
from effv2_adapters.torch.train import make_torch_backend
from effv2_adapters.train_check import (check_schedule, check_training, local_process_env,
                                        run_train_check, torchrun_command)

SIZE = 24


def spec():
    doc = json.loads(load_preset("efficientnetv2-nano").model_dump_json())
    doc["conventions"]["stochastic_depth"]["rate"] = 0.2
    return parse_obj(doc)


@pytest.fixture(scope="module")
def data():
    train, held = split(load_digits(SIZE))
    return train.subset(np.arange(48), "digits:48"), held.subset(np.arange(24), "digits:held")


def torch_loop(docs, data, *, dtype="float64", out=None, **options):
    make, _ = make_torch_backend(dtype=dtype, device="cpu", precision=options.pop("precision", "float32"),
                                 channels_last=options.pop("channels_last", False), compile=False)
    return ProgressiveLoop(*docs, *data, make, seed=1, dtype=dtype, out_dir=out, checkpoint_every=None, **options)


@pytest.mark.parametrize("optimizer,group", [("rmsprop", 8), ("sgd", 4)])
def test_one_process_equals_the_oracle(data, optimizer, group):
    docs = (spec(), parse_obj(check_schedule(6, SIZE)), parse_obj(check_training(optimizer, 16, group)))
    oracle = Trainer(*docs, *data, seed=1, dtype="float64", checkpoint_every=None)
    oracle.run()
    torch_run = torch_loop(docs, data)
    torch_run.run()
    parts = assert_same_states(oracle, torch_run)
    assert {p.part for p in parts} == {"model", "optimizer", "ema"} and all(p.tensors > 50 for p in parts)
    assert [h["loss"] for h in oracle.history] == pytest.approx([h["loss"] for h in torch_run.history], rel=1e-12)
    # and the run was not trivial: the weights moved, two stages at two sizes
    assert [h["image_size"] for h in oracle.history] == [16, 24]
    assert not np.allclose(oracle.model.params["stem.conv.weight"],
                           trainer_states(torch_run)["model"]["stem.conv.weight"] * 0)


def test_a_run_moves_between_frameworks_mid_stage(data, tmp_path):
    """Oracle to step 4, the torch trainer resumes its checkpoint; and the other way round."""
    docs = (spec(), parse_obj(check_schedule(6, SIZE)), parse_obj(check_training("rmsprop", 16, 8)))
    full = Trainer(*docs, *data, seed=1, dtype="float64", checkpoint_every=None)
    full.run()
    first = Trainer(*docs, *data, seed=1, dtype="float64", out_dir=tmp_path / "a", checkpoint_every=None)
    first.run(stop_at=4)
    second = torch_loop(docs, data, out=tmp_path / "a")
    second.resume()
    assert second.step == 4
    second.run()
    assert_same_states(full, second)
    back = torch_loop(docs, data, out=tmp_path / "b")
    back.run(stop_at=3)
    oracle = Trainer(*docs, *data, seed=1, dtype="float64", out_dir=tmp_path / "b", checkpoint_every=None)
    oracle.resume()
    oracle.run()
    assert_same_states(full, oracle)


def test_channels_last_and_bfloat16_run(data):
    docs = (spec(), parse_obj(check_schedule(2, SIZE)), parse_obj(check_training("sgd", 16, 8)))
    plain, cl = torch_loop(docs, data), torch_loop(docs, data, channels_last=True)
    plain.run()
    cl.run()
    assert_same_states(plain, cl, tol=1e-12)
    bf = torch_loop(docs, data, dtype="float32", precision="bfloat16")
    result = bf.run()
    assert all(np.isfinite(h["loss"]) for h in result.stages)
    # bfloat16 autocast really ran in lower precision: the float32 run differs, but not by much
    f32 = torch_loop(docs, data, dtype="float32")
    f32.run()
    w_bf, w_32 = trainer_states(bf)["model"]["stem.conv.weight"], trainer_states(f32)["model"]["stem.conv.weight"]
    assert 0 < np.abs(w_bf - w_32).max() < 0.1 * np.abs(w_32).max()


@pytest.mark.parametrize("group,optimizer", [(8, "rmsprop"), (16, "sgd")])
def test_two_gloo_processes_equal_the_oracle(group, optimizer):
    """group 8 = each process's rows (what plain DDP does); 16 = the whole batch across both processes."""
    report = run_train_check(spec(), nproc=2, steps=4, optimizer=optimizer, group_size=group, timeout_s=300)
    assert report.passed, report.to_json()
    assert report.processes == 2 and all(p.worst <= 1e-9 for p in report.parts)


def invoke(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)])


def test_cli_refusals(tmp_path):
    r = invoke("--framework", "torch", "--device", "cuda", "--steps", 1, "--out", tmp_path / "c")
    assert r.exit_code == 1 and "CUDA is not available" in r.output and "Traceback" not in r.output
    r = invoke("--device", "cpu", "--steps", 1, "--out", tmp_path / "d")
    assert r.exit_code == 2 and "only with --framework torch" in r.output
    r = invoke("--framework", "torch", "--precision", "float16", "--device", "cpu", "--steps", 1,
               "--out", tmp_path / "e")
    assert r.exit_code == 1 and "needs a CUDA device" in r.output


def test_torchrun_refuses_a_world_that_does_not_divide_the_batch(tmp_path):
    training = tmp_path / "t.json"
    training.write_text(json.dumps(check_training("sgd", 16, None)))
    cmd = torchrun_command(3, ["train", "--framework", "torch", "--device", "cpu", "--training", str(training),
                               "--steps", "2", "--out", str(tmp_path / "o"), "--timeout", "60"])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=local_process_env())
    assert done.returncode != 0
    first = [ln for ln in done.stderr.splitlines() if ln.strip()][0]
    assert "batch of 16" in first and "3" in first and "Traceback" not in first, done.stderr[-2000:]


def test_check_train_steps_cli():
    r = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", "torch", "--train-steps", "2",
                                  "--optimizer", "sgd", "--image-size", "16", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["passed"] and [p["part"] for p in report["parts"]] == ["model", "optimizer", "ema"]
    assert all(p["worst"] <= 1e-9 for p in report["parts"])
    r = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", "torch", "--nproc", "2"])
    assert r.exit_code == 2 and "only with --train-steps" in r.output


def test_torch_resume_is_bit_identical_and_a_two_process_run_resumes_in_one(data, tmp_path):
    docs = (spec(), parse_obj(check_schedule(6, SIZE)), parse_obj(check_training("rmsprop", 16, 8, 8)))
    full = torch_loop(docs, data)
    full.run()
    cut = torch_loop(docs, data, out=tmp_path / "cut")
    cut.run(stop_at=2)
    resumed = torch_loop(docs, data, out=tmp_path / "cut")
    resumed.resume()
    resumed.run()
    for part in ("model", "optimizer", "ema"):
        for k, v in trainer_states(full)[part].items():
            assert np.array_equal(v, trainer_states(resumed)[part][k]), (part, k)
    # two gloo processes train to step 3 and stop; one process finishes the run
    folder = tmp_path / "two"
    for name, doc in (("spec.json", docs[0]), ("schedule.json", docs[1]), ("training.json", docs[2])):
        (tmp_path / name).write_text(doc.model_dump_json())
    images, labels = np.concatenate([data[0].images, data[1].images]), np.concatenate([data[0].labels, data[1].labels])
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    args = ["train", str(tmp_path / "spec.json"), "--schedule", str(tmp_path / "schedule.json"), "--training",
            str(tmp_path / "training.json"), "--data", str(tmp_path / "d.npz"), "--dtype", "float64", "--seed", "1",
            "--framework", "torch", "--device", "cpu", "--out", str(folder), "--checkpoint-every", "0"]
    done = subprocess.run(torchrun_command(2, args + ["--stop-at", "3", "--timeout", "60"]), capture_output=True,
                          text=True, timeout=240, env=local_process_env())
    assert done.returncode == 0, done.stderr[-2000:]
    r = CliRunner().invoke(main, args + ["--resume"])
    assert r.exit_code == 0, r.output
    oracle_dir = tmp_path / "oracle"
    oracle_args = args[:args.index("--framework")] + ["--out", str(oracle_dir), "--checkpoint-every", "0"]
    r = CliRunner().invoke(main, oracle_args)
    assert r.exit_code == 0, r.output
    from effv2_train.checkpoint import load_checkpoint

    a, b = load_checkpoint(oracle_dir / "checkpoint.npz"), load_checkpoint(folder / "checkpoint.npz")
    assert b.meta["processes"] == 1 and b.meta["step"] == 6
    assert_same_states(a, b)


def test_a_dead_process_stops_the_others_with_one_line(tmp_path):
    """Kill rank 1 mid-run: rank 0 must not hang; it stops with one line and exit 1."""
    import os
    import signal
    import time

    from effv2_adapters.train_check import free_port

    env = local_process_env()
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    args = [sys.executable, "-m", "effv2_cli", "train", "--framework", "torch", "--device", "cpu",
            "--steps", "400", "--checkpoint-every", "1", "--timeout", "20", "--out", str(tmp_path / "o")]
    procs = [subprocess.Popen(args, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        deadline = time.time() + 180
        while not (tmp_path / "o" / "checkpoint.npz").exists():  # training is under way
            assert time.time() < deadline and procs[0].poll() is None, "the run did not start"
            time.sleep(0.2)
        os.kill(procs[1].pid, signal.SIGKILL)
        out, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 1, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln]
    assert len(lines) == 1 and "training stopped at step" in lines[0] and "Traceback" not in err, err[-2000:]


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    from effv2_train.checkpoint import load_checkpoint
    from effv2_train.trainloop import TrainingDiverged

    cfg = check_training("sgd", 16, 8)
    cfg["learning_rate"] = {"base": 100.0, "reference_batch_size": 1, "warmup_epochs": 0.0,
                            "decay": {"type": "constant"}}
    docs = (spec(), parse_obj(check_schedule(6, SIZE)), parse_obj(cfg))
    make, _ = make_torch_backend(dtype="float32", device="cpu", precision="float32", channels_last=False, compile=False)
    loop = ProgressiveLoop(*docs, *data, make, seed=1, dtype="float32", out_dir=tmp_path, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="last good checkpoint|non-finite"):
        loop.run()
    ck = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ck.meta["step"] >= 1 and ck.meta["framework"] == "torch"
    assert all(np.isfinite(v).all() for v in ck.model.values())
