"""A trainer with loader workers (`--workers 1`) killed in every way a user or a machine kills it: no process
of the run is alive 2 s later, nothing new is in /dev/shm, nobody holds the trainer's pipes, and Ctrl-C or
SIGTERM give the trainer's one line, not a worker's traceback (reliability probe 3: LK1, N9)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

CLI = [sys.executable, "-m", "effv2_cli"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
SHM = Path("/dev/shm")

pytestmark = [pytest.mark.slow,  # ~7 s each: a trainer must start, spawn its worker and train before a kill
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG")]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status waits for a reaper


def _start(tmp_path, steps=2000, checkpoint_every=0):
    """A trainer that has started its loader worker and is training; (process, worker pid)."""
    proc = subprocess.Popen([*CLI, "train", "efficientnetv2-nano", "--steps", str(steps), "--nproc", "1", "--workers",
                             "1", "--checkpoint-every", str(checkpoint_every), "--out", str(tmp_path / "run")], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        workers = [p for p in _children(proc.pid) if b"loader_worker" in _cmdline(p)]
        if workers:
            break
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no loader worker started"
        time.sleep(0.05)
    time.sleep(2.0)  # let it serve a few steps
    return proc, workers[0]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _shm() -> set[str]:
    return set(os.listdir(SHM)) if SHM.is_dir() else set()


@pytest.mark.parametrize("kill", ["trainer", "group"])
def test_sigkill_leaves_no_worker_and_nothing_in_dev_shm(tmp_path, kill):
    before = _shm()
    proc, worker = _start(tmp_path)
    try:
        if kill == "trainer":
            os.kill(proc.pid, signal.SIGKILL)
        else:  # timeout -s KILL, docker kill, an OOM kill of the cgroup
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        time.sleep(2.0)
        assert not _alive(worker)
        # nobody else holds the trainer's pipes: `effv2 train ... | tee log` ends
        proc.communicate(timeout=5)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
    assert _shm() - before == set()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_the_run_in_one_line(tmp_path, sig, code):
    before = _shm()
    proc, worker = _start(tmp_path)
    try:
        if sig == signal.SIGINT:  # even a Ctrl-C sent to the worker alone ends nothing: the trainer decides
            os.kill(worker, sig)
            time.sleep(0.5)
            assert _alive(worker) and proc.poll() is None
        os.killpg(proc.pid, sig)  # a terminal's Ctrl-C reaches the whole foreground group
        out, err = proc.communicate(timeout=30)
        time.sleep(2.0)
        assert not _alive(worker)
    finally:
        if proc.poll() is None:
            proc.kill()
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
    assert proc.returncode == code
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert [line for line in err.splitlines() if line.strip()][-1].startswith("interrupted at step ")
    assert _shm() - before == set()


def test_a_killed_worker_stops_the_run_in_one_line(tmp_path):
    proc, worker = _start(tmp_path)
    try:
        os.kill(worker, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert re.fullmatch(r"efficientnetv2-nano: training stopped at step \d+ "
                        r"\(a data loader process ended \(exit code -9\)\); "
                        r"(the checkpoint at step \d+ in .* is kept; continue with --resume"
                        r"|no checkpoint was written yet)", last), last


def test_a_command_tied_to_its_parent_ends_with_it():
    """What `effv2 check --train-steps` starts (a run, torchrun) gets SIGTERM when the check is SIGKILLed."""
    code = ("import subprocess, sys, time; from effv2_train.lifeline import tied_to_parent; "
            "p = subprocess.Popen(tied_to_parent([sys.executable, '-c', 'import time; time.sleep(60)'])); "
            "time.sleep(0.5); print(p.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 2.0
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_run_stopped_by_sigterm_resumes_to_the_same_bytes(tmp_path):
    """SIGTERM mid-run with a loader worker, --resume to the end: the weights equal an uninterrupted run's, byte
    for byte, and so does every array of the final checkpoint."""
    proc, worker = _start(tmp_path, steps=200, checkpoint_every=10)
    deadline = time.monotonic() + 60
    while not (tmp_path / "run" / "checkpoint.npz").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "continue with --resume" in err
    assert not (tmp_path / "run" / "weights.safetensors").exists()  # stopped before the end
    common = ["train", "efficientnetv2-nano", "--steps", "200", "--nproc", "1", "--checkpoint-every", "0"]
    for args in (["--workers", "1", "--resume", "--out", tmp_path / "run"],
                 ["--workers", "0", "--out", tmp_path / "whole"]):
        done = subprocess.run([*CLI, *common, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
    from effv2_train.checkpoint import load_checkpoint

    weights = [(tmp_path / run / "weights.safetensors").read_bytes() for run in ("run", "whole")]
    assert weights[0] == weights[1]
    a, b = load_checkpoint(tmp_path / "run" / "checkpoint.npz"), load_checkpoint(tmp_path / "whole" / "checkpoint.npz")
    assert a.meta["step"] == b.meta["step"] == 200
    for part in ("model", "optimizer", "ema"):
        x, y = getattr(a, part), getattr(b, part)
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x), part


def test_a_killed_parent_leaves_no_command_and_no_temp_folder(tmp_path):
    """`effv2 check --train-steps` runs each training under a supervisor: when the check is SIGKILLed, the run
    (torchrun and its ranks) is stopped and the check's temporary folder removed."""
    folder = tmp_path / "check-tmp"
    folder.mkdir()
    (folder / "data.npz").write_bytes(b"x")
    code = ("import subprocess, sys, time; from effv2_train.lifeline import tied_to_parent; "
            "p = subprocess.Popen(tied_to_parent([sys.executable, '-c', 'import time; time.sleep(60)'], "
            "cleanup=sys.argv[1])); print(p.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    supervisor = int(parent.stdout.readline())
    deadline = time.monotonic() + 30
    while not (commands := _children(supervisor)):
        assert time.monotonic() < deadline, "the supervisor started nothing"
        time.sleep(0.05)
    try:
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 3.0
        while (_alive(supervisor) or _alive(commands[0]) or folder.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(commands[0]) and not _alive(supervisor) and not folder.exists()
    finally:
        for pid in (supervisor, *commands):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
