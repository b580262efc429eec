"""The output folder of `effv2 train` is never lost and never shared: an earlier run survives every refused
`--overwrite` byte for byte, two runs into one folder cannot both train, and an unwritable folder is refused
at start (reliability probe 3: LOSS1, LOSS2, S-LATE)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from effv2_train.checkpoint import CheckpointError, prepare_out_dir
from effv2_train.run_lock import LOCK_NAME

CLI = [sys.executable, "-m", "effv2_cli"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def effv2(*args, cwd=None, timeout=120):
    result = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd,
                            timeout=timeout)
    assert "Traceback" not in result.stderr + result.stdout
    return result


def lines(result) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert effv2("train", "efficientnetv2-nano", "--steps", "2", "--out", root / "k").returncode == 0
    return root / "k"


def _other_network_weights(path):
    """Weights with the same tensors as nano but for another network (symmetric padding)."""
    from effv2_spec.documents import parse_obj
    from effv2_spec.presets import text
    from effv2_spec.weights import save_weights
    from effv2_reference.model import ReferenceModel

    doc = json.loads(text("efficientnetv2-nano"))
    doc["conventions"]["padding"], doc["name"] = "symmetric", "sym"
    arch = parse_obj(doc)
    save_weights(path, arch, ReferenceModel(arch, seed=1).state_dict())
    return path


@pytest.mark.parametrize("refusal, code", [
    (["--nproc", "64"], 2),
    (["--framework", "torch", "--device", "cuda:99"], 1),
    (["--framework", "torch", "--device", "cpu", "--precision", "float16"], 1),
    (["--init-from", "OTHER"], 1),
    (["--schedule", "no-such-schedule"], 1),
])
def test_a_refused_overwrite_leaves_the_earlier_run_byte_for_byte(earlier_run, tmp_path, refusal, code):
    before = snapshot(earlier_run)
    args = [str(_other_network_weights(tmp_path / "sym.safetensors")) if a == "OTHER" else a for a in refusal]
    result = effv2("train", "efficientnetv2-nano", "--steps", "2", "--out", earlier_run, "--overwrite", *args)
    assert result.returncode == code, result.stderr
    assert snapshot(earlier_run) == before


def test_an_overwrite_killed_before_its_first_checkpoint_leaves_the_earlier_run(earlier_run):
    before = snapshot(earlier_run)
    proc = subprocess.Popen([*CLI, "train", "efficientnetv2-nano", "--steps", "400", "--checkpoint-every", "0",
                             "--workers", "0", "--out", str(earlier_run), "--overwrite"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (earlier_run / LOCK_NAME).exists(), 60)
    finally:
        proc.kill()
        proc.wait(30)
    after = snapshot(earlier_run)
    # the earlier run's files, byte for byte (a SIGKILLed run cannot remove its lock file, whose lock the kernel
    # released, nor the record it had begun)
    assert {name: after.get(name) for name in before} == before


def test_an_overwrite_replaces_both_files_once_it_has_a_checkpoint(tmp_path):
    out = tmp_path / "k"
    assert effv2("train", "efficientnetv2-nano", "--steps", "2", "--out", out).returncode == 0
    old = snapshot(out)
    result = effv2("train", "efficientnetv2-nano", "--steps", "4", "--seed", "3", "--stop-at", "1", "--out", out,
                   "--overwrite")
    assert result.returncode == 0, result.stderr
    names = {p.name for p in out.iterdir()}
    assert "checkpoint.npz" in names and "weights.safetensors" not in names  # the old weights were the old run's
    assert (out / "checkpoint.npz").read_bytes() != old["checkpoint.npz"]


def test_two_runs_into_one_folder_exactly_one_trains(tmp_path):
    out = tmp_path / "cc"
    first = subprocess.Popen([*CLI, "train", "efficientnetv2-nano", "--steps", "400", "--checkpoint-every", "0",
                              "--workers", "0", "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / LOCK_NAME).exists() and (out / LOCK_NAME).read_text().strip(), 60)
        second = effv2("train", "efficientnetv2-nano", "--steps", "2", "--out", out)
        assert second.returncode == 1
        assert lines(second) == [f"{out}: another run (process {first.pid}) is writing to this folder; "
                                 "wait for it to end or choose another --out"]
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    # the kernel dropped the killed run's lock: the folder is usable at once (--overwrite: the killed run
    # may have reached its first stage's checkpoint)
    assert effv2("train", "efficientnetv2-nano", "--steps", "2", "--out", out, "--overwrite").returncode == 0
    assert not (out / LOCK_NAME).exists() and (out / "weights.safetensors").is_file()


@pytest.mark.parametrize("where, reason", [("file/run", "Not a directory"), ("/proc/effv2-run", None)])
def test_an_unwritable_out_is_refused_before_training(tmp_path, where, reason):
    (tmp_path / "file").write_text("x")
    out = where if where.startswith("/") else tmp_path / where
    result = effv2("train", "efficientnetv2-nano", "--steps", "400", "--out", out, timeout=60)
    assert result.returncode == 1
    [line] = lines(result)  # no banner: training never started
    assert line.startswith(f"{out}: cannot write (") and (reason is None or reason in line)


def test_a_refused_command_leaves_no_new_folder(tmp_path):
    result = effv2("train", "efficientnetv2-nano", "--steps", "2", "--out", tmp_path / "new", "--nproc", "64")
    assert result.returncode == 2 and not (tmp_path / "new").exists()


def test_workers_are_capped_at_the_core_count(tmp_path):
    result = effv2("train", "efficientnetv2-nano", "--steps", "2", "--out", tmp_path / "w", "--workers", "1000")
    assert result.returncode == 2 and "--workers 1000: this machine has" in result.stderr


def test_the_lock_is_taken_before_the_folder_is_inspected(tmp_path):
    """prepare_out_dir(lock=True) in a process that holds the folder: a second process is refused, naming it."""
    code = ("import sys, time; from pathlib import Path; from effv2_train.checkpoint import prepare_out_dir; "
            "prepare_out_dir(Path(sys.argv[1]), 'x', resume=False, overwrite=False, lock=True); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match=f"another run \\(process {holder.pid}\\)"):
            prepare_out_dir(tmp_path, "x", resume=False, overwrite=False, lock=True)
    finally:
        holder.kill()
        holder.wait(30)


def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
