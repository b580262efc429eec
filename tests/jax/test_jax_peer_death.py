"""A dead jax.distributed peer or coordinator: the survivor ends with one effv2 line and exit 1.

JAX's coordination service aborts the surviving processes (SIGABRT, ~20 lines of C++ log); `effv2 train`
runs the jax work of a multi-process run in a supervised child (adapters/jax/supervise.py) that turns
this into one line. The stderr filter is checked on lines recorded from such an abort, the whole path
with two real processes on 127.0.0.1 of which one is SIGKILLed after the first checkpoint.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from effv2_adapters.jax.supervise import StderrFilter, stopped_message
from effv2_adapters.train_check import check_schedule, check_training, free_port, jax_device_env, jax_process_commands
from effv2_train.data import load_digits

#: stderr of process 0 (the coordinator) after SIGKILL of process 1, as `effv2 train` ran it before the
#: supervisor: the C++ coordination-service messages (one spans 4 lines), the abort and its stack trace
ABORT_DUMP = (Path(__file__).parent / "jax_abort_stderr.txt").read_bytes()
STOP_LINE = (b"efficientnetv2-nano: training stopped at step 2 (UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/"
             b"transport/tcp/pair.cc:538] Read error [127.0.0.1]:3259: Connection reset by peer); another process "
             b"may have died\n")
CPP_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\]")


def test_the_filter_drops_the_cpp_log_and_holds_the_stop_line():
    filt = StderrFilter()
    progress = b"stage 1/2 (16 px): step 4/400 loss 2.31\n"
    assert filt.feed(progress) == progress
    # a partial line waits for its end; a log message's lines written at once are dropped together
    assert filt.feed(b"I0000 00:00:1765140100.123456  131800 grpc_server.cc:42] ser") == b""
    assert filt.feed(b"ver started\nits second line\n") == b""
    assert filt.feed(b"a warning of its own\n") == b"a warning of its own\n"
    assert filt.feed(STOP_LINE) == b"" and filt.held == [STOP_LINE]
    lines = ABORT_DUMP.splitlines(keepends=True)
    assert filt.feed(b"".join(lines[:4])) == b""  # one message of 4 lines
    assert filt.feed(b"".join(lines[4:])) == b""
    # after the fatal line, whatever the abort writes (Python's own dump included) stays off the terminal
    assert filt.feed(b"Fatal Python error: Aborted\n") == b"" and filt.feed(b"") == b""
    assert list(filt.dropped) == [b"I0000 00:00:1765140100.123456  131800 grpc_server.cc:42] server started\n",
                                  b"its second line\n", *lines, b"Fatal Python error: Aborted\n"]
    assert filt.held == [STOP_LINE]


def test_the_stopped_line_names_the_process_and_the_checkpoint(tmp_path):
    assert stopped_message(("1", "2"), signal.SIGABRT, None, tmp_path) == (
        "effv2 train: jax process 1 of 2 stopped: another process or the coordinator (process 0) died, and the JAX "
        f"distributed service ended this one; no checkpoint in {tmp_path}")
    meta = np.frombuffer(json.dumps({"step": 12}).encode(), dtype=np.uint8)
    np.savez(tmp_path / "checkpoint.npz", meta=meta)
    said = STOP_LINE.decode().rstrip()
    assert stopped_message(("0", "2"), signal.SIGABRT, said, tmp_path) == (
        f"{said}; the last checkpoint is kept: {tmp_path / 'checkpoint.npz'} (step 12); continue with --resume")
    assert stopped_message(("0", "2"), signal.SIGSEGV, None, tmp_path).startswith(
        "effv2 train: jax process 0 of 2 died (SIGSEGV); the last checkpoint is kept:")


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """Documents of a long, tiny run (nano at 8 -> 16 px, 400 steps, a checkpoint every 2) and one jax cache."""
    root = tmp_path_factory.mktemp("peer-death")
    doc = {"spec.json": None, "schedule.json": check_schedule(400, 16), "training.json": check_training("sgd", 8, 4, 4)}
    from effv2_spec.presets import load as load_preset

    doc["spec.json"] = json.loads(load_preset("efficientnetv2-nano").model_dump_json())
    for name, d in doc.items():
        (root / name).write_text(json.dumps(d))
    digits = load_digits(16)
    np.savez(root / "data.npz", images=digits.images[:60], labels=digits.labels[:60])
    return root


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _stop(procs, workers):
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _gone(pid: int, within_s: float) -> bool:
    """`pid` ended (a zombie counts: nobody may be left to reap it) within `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def _start(root: Path, out: Path, tmp_path: Path):
    """Two `effv2 train --framework jax` processes of the tiny run, stdout/stderr to tmp_path/p<i>.out/.err."""
    args = ["train", root / "spec.json", "--schedule", root / "schedule.json", "--training", root / "training.json",
            "--data", root / "data.npz", "--dtype", "float32", "--framework", "jax", "--device", "cpu",
            "--checkpoint-every", "2", "--out", out]
    env = dict(jax_device_env(1), EFFV2_JAX_CACHE=str(root / "jax-cache"))
    procs = []
    for i, cmd in enumerate(jax_process_commands(2, list(map(str, args)), free_port(), timeout_s=30)):
        with open(tmp_path / f"p{i}.out", "wb") as o, open(tmp_path / f"p{i}.err", "wb") as e:
            procs.append(subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env,
                                          start_new_session=True))
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.npz").exists():
        if not all(p.poll() is None for p in procs) or time.monotonic() > deadline:
            _stop(procs, [])
            pytest.fail(f"no checkpoint within 300 s: {[(tmp_path / f'p{i}.err').read_text() for i in range(2)]}")
        time.sleep(0.2)
    workers = [c for p in procs for c in _children(p.pid)]
    assert len(workers) == 2, workers  # each effv2 process runs its jax work in one supervised child
    return procs, workers


@pytest.mark.slow
def test_sigterm_stops_both_processes_at_a_step_with_exit_143(run_files, tmp_path):
    """jax.distributed takes SIGTERM for a preemption notice and trains on; the supervisor passes it as SIGINT."""
    out = tmp_path / "out"
    procs, workers = _start(run_files, out, tmp_path)
    try:
        for p in procs:
            os.kill(p.pid, signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        _stop(procs, workers)
    errs = [(tmp_path / f"p{i}.err").read_text() for i in range(2)]
    assert codes == [143, 143], errs
    for err in errs:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1, err
        assert re.fullmatch(rf"interrupted at step \d+: checkpoint at step \d+ in {re.escape(str(out))}; "
                            "continue with --resume", lines[0]), err


@pytest.mark.slow
@pytest.mark.parametrize("victim,whom", [(1, "jax"), (0, "jax"), (1, "effv2")])
def test_a_dead_peer_ends_the_other_process_with_one_line(run_files, tmp_path, victim, whom):
    """SIGKILL of one jax process (the work under `effv2 train`'s supervisor, or the `effv2 train` process itself,
    which takes its jax process along) after the first checkpoint: the other `effv2 train` exits 1 within the
    timeout, with one effv2 line on stderr, no C++ log, no traceback."""
    root, out = run_files, tmp_path / "out"
    procs, workers = _start(root, out, tmp_path)
    try:
        os.kill(workers[victim] if whom == "jax" else procs[victim].pid, signal.SIGKILL)
        killed = time.monotonic()
        assert _gone(workers[victim], 3.0)
        code = procs[1 - victim].wait(timeout=120)
        ended = time.monotonic() - killed
    finally:
        _stop(procs, workers)
    err = (tmp_path / f"p{1 - victim}.err").read_text()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and not any(CPP_LINE.match(ln) for ln in err.splitlines()), err
    assert ("another process" in lines[0] and "the last checkpoint is kept" in lines[0]
            and str(out / "checkpoint.npz") in lines[0]), lines[0]
    kept = (out / f"jax-process-{1 - victim}.log").read_text()  # the C++ log went to the run's folder
    assert "Terminating process because the JAX distributed service detected fatal errors" in kept
    # the trainer's own line when the peer's death broke a collective (completed with the checkpoint), else the
    # supervisor's: a dead coordinator can abort the survivor before its trainer notices anything
    assert re.match(rf"(effv2 train: jax process {1 - victim} of 2 stopped: another process or the coordinator "
                    r"\(process 0\) died|efficientnetv2-nano: training stopped at step \d+ \(.*\); another process may "
                    r"have died;)", lines[0]), lines[0]
    print(f"process {1 - victim} ended {ended:.1f} s after the SIGKILL of process {victim}: {lines[0]}")
