"""Data on disk under several processes and devices, through the train command as a user runs it: torch under
torchrun (2 processes, each reading only its own rows of an ImageNet-layout folder through a loader worker) and
JAX on 2 simulated devices reading Parquet shards end where the oracle ends on the folder, in one process
(float64, <= 1e-9). The in-process equalities of the three trainers are in test_sources_trainers.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from asserts import assert_same_states
from effv2_adapters.train_check import (check_schedule, check_training, jax_device_env, local_process_env,
                                        torchrun_command)
from effv2_train.checkpoint import load_checkpoint
from source_trees import write_imagenet_layout, write_shards

pytestmark = pytest.mark.slow
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("processes")
    root = write_imagenet_layout(tmp / "imagenet", 6, 2)  # 18 train, 6 val
    shards = tmp / "shards"
    write_shards(shards, root / "train", "train", shards=3, row_group=4)
    write_shards(shards, root / "val", "validation", shards=1)
    (tmp / "schedule.json").write_text(json.dumps(check_schedule(4, 24)))
    # BN statistics and mixing in groups of 4 rows: one process's half of a batch of 8
    (tmp / "training.json").write_text(json.dumps(check_training("sgd", 8, 4, 4)))
    common = ["train", "efficientnetv2-nano", "--schedule", str(tmp / "schedule.json"), "--training",
              str(tmp / "training.json"), "--dtype", "float64", "--seed", "1", "--checkpoint-every", "0"]
    run(["python", "-m", "effv2_cli", *common, "--data", str(root), "--workers", "0", "--out", str(tmp / "oracle")])
    return {"tmp": tmp, "root": root, "shards": shards, "common": common,
            "oracle": load_checkpoint(tmp / "oracle" / "checkpoint.npz")}


def run(cmd: list[str], env: dict | None = None) -> str:
    cmd = [sys.executable, *cmd[1:]] if cmd[0] == "python" else cmd
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


def assert_same_end(ref, got) -> None:
    assert_same_states(ref, got)
    assert [h["heldout_accuracy"] for h in ref.meta["history"]] == [h["heldout_accuracy"] for h in got.meta["history"]]


@pytest.mark.torch
def test_torch_two_processes_on_a_folder_equal_the_oracle(setup):
    pytest.importorskip("torch")
    out = setup["tmp"] / "torch2"
    args = [*setup["common"], "--data", str(setup["root"]), "--framework", "torch", "--device", "cpu",
            "--workers", "1", "--out", str(out), "--timeout", "120"]
    run(torchrun_command(2, args), env=local_process_env())
    got = load_checkpoint(out / "checkpoint.npz")
    assert got.meta["processes"] == 2
    assert [h["image_size"] for h in got.meta["history"]] == [16, 24]
    assert_same_end(setup["oracle"], got)


@pytest.mark.jax
def test_jax_two_devices_on_shards_equal_the_oracle_on_the_folder(setup):
    pytest.importorskip("jax")
    out = setup["tmp"] / "jax2"
    env = jax_device_env(2)
    env.setdefault("EFFV2_JAX_CACHE", str(setup["tmp"] / "jax-cache"))
    report = json.loads(run(["python", "-m", "effv2_cli", *setup["common"], "--data", str(setup["shards"]),
                             "--framework", "jax", "--device", "cpu", "--out", str(out), "--json"], env=env))
    assert report["devices"] == 2
    got = load_checkpoint(out / "checkpoint.npz")
    assert_same_end(setup["oracle"], got)
