"""`effv2 train --framework jax` on several processes, run in a supervised child process.

When a peer or the coordinator dies, JAX's coordination service ends the survivors with SIGABRT and
~20 lines of C++ log (absl/glog format, a "Check failure stack trace"), and a survivor whose
coordinator died prints no effv2 line at all. That abort cannot be caught inside the process, so the
effv2 process re-executes itself as a child (same arguments, `SUPERVISED` set in its environment),
passes its stdout through untouched, keeps the C++ log lines of its stderr out of the terminal (in
`<out>/jax-process-<id>.log` when the folder exists) and, when the child dies by a signal, says so in
one line and exits 1. Any other exit code passes through. The child ends with its supervisor
(`lifeline.tied_to_parent`); SIGINT and SIGTERM reach it through the supervisor, once, as SIGINT.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from effv2_train.lifeline import tied_to_parent
from effv2_spec.text import printable

#: set in the child's environment: it runs the training itself instead of supervising again
SUPERVISED = "EFFV2_JAX_SUPERVISED"

#: an absl/glog line: severity, MMDD, time, thread id, file:line]
_CPP_LOG = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\]")
_FATAL = re.compile(rb"^F\d{4} ")
_STACK_TRACE = b"*** Check failure stack trace: ***"
#: the trainer's own one line about a failed collective (effv2_cli.train), completed by the supervisor if the
#: child is then aborted
_STOP_LINE = re.compile(rb"^\S.*: training stopped at step \d+ ")
_KEPT_LINES = 5000


class StderrFilter:
    """Sorts the child's stderr lines: for the terminal, for the log file, or held back (the trainer's stop line,
    printed once the child's fate is known).

    A C++ log message may span lines ("... has failed:\nINTERNAL: Barrier failed ..."); glog writes a message
    in one write(), so the lines after a log line in the same read (`feed`) belong to it."""

    def __init__(self):
        self.dropped: collections.deque[bytes] = collections.deque(maxlen=_KEPT_LINES)
        self.held: list[bytes] = []
        self._aborting = False  # after a fatal (F) line or a stack trace, the rest is the abort's dump
        self._in_message = False  # the lines so far in this read continue a C++ log message
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        """What of one read from the pipe goes to the terminal (b"" at the end: whatever line is left)."""
        data, self._partial = self._partial + chunk, b""
        lines = data.splitlines(keepends=True)
        if chunk and lines and not lines[-1].endswith((b"\n", b"\r")):
            self._partial = lines.pop()
        shown = [line for line in lines if self.sort(line) == "pass"]
        if not self._partial:  # the next read starts with a new write
            self._in_message = False
        return b"".join(shown)

    def sort(self, line: bytes) -> str:
        """'pass', 'drop' (C++ log) or 'hold' for one line (with its line break)."""
        if _STOP_LINE.match(line):
            self.held.append(line)
            return "hold"
        log_line = _CPP_LOG.match(line) is not None
        if log_line and _FATAL.match(line) or line.startswith(_STACK_TRACE):
            self._aborting = True
        self._in_message = self._in_message or log_line
        if self._aborting or self._in_message:
            self.dropped.append(line)
            return "drop"
        return "pass"


def wanted(coordinator: str | None) -> bool:
    """Supervise this run: several jax processes, not yet supervised, and this process is the effv2 program
    (an in-process call, e.g. click's test runner, has another program's argv to re-execute)."""
    if os.environ.get(SUPERVISED) or not (coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return False
    program = Path(sys.argv[0])
    import importlib.util

    main_module = Path(importlib.util.find_spec("effv2_cli.__main__").origin).resolve()  # python -m effv2_cli
    return program.stem == "effv2" or program.resolve() == main_module


def run(out_dir: str | None, spec_name: str, process_id: int | None, num_processes: int | None) -> int:
    """Run this command again as a supervised child; its exit code, or 1 with one line if a signal ended it.

    out_dir, spec_name: the run's --out and spec (its default folder), where the checkpoint and the log go."""
    from effv2_train.checkpoint import DEFAULT_ROOT

    out = Path(out_dir) if out_dir else DEFAULT_ROOT / spec_name
    env = dict(os.environ, **{SUPERVISED: "1"})
    # SIGKILL: jax.distributed takes SIGTERM as a preemption notice and trains on
    cmd = tied_to_parent([sys.executable, "-m", "effv2_cli", *sys.argv[1:]], sig=signal.SIGKILL)
    # its own process group: a Ctrl-C at the terminal reaches the child once, through the handler below
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, process_group=0)
    forwarded: list[int] = []

    def forward(signum, frame):  # as SIGINT: the trainer stops at once and names its checkpoint (not so SIGTERM)
        forwarded.append(signum)
        try:
            os.kill(child.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    filt = StderrFilter()
    try:
        while chunk := os.read(child.stderr.fileno(), 65536):
            _show(filt.feed(chunk))
        _show(filt.feed(b""))
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    who = _who(process_id, num_processes)
    _write_log(out, who[0], filt.dropped)
    if code >= 0 or forwarded:
        sys.stderr.buffer.write(b"".join(filt.held))
        sys.stderr.flush()
        interrupted = forwarded and code in (128 + signal.SIGINT, -signal.SIGINT)
        return 128 + forwarded[0] if interrupted or code < 0 else code
    said = filt.held[-1].decode("utf-8", "replace").rstrip() if filt.held else None
    print(stopped_message(who, -code, said, out), file=sys.stderr, flush=True)
    return 1


def _show(data: bytes) -> None:
    if data:
        sys.stderr.buffer.write(data)
        sys.stderr.flush()


def stopped_message(who: tuple[str, str], signum: int, said: str | None, out: Path) -> str:
    """One line for a child ended by `signum`; `said`: the trainer's own line about it, if it printed one."""
    i, n = who
    if said is None:
        if signum == signal.SIGABRT:
            said = (f"effv2 train: jax process {i} of {n} stopped: another process or the coordinator (process 0) "
                    "died, and the JAX distributed service ended this one")
        else:
            said = f"effv2 train: jax process {i} of {n} died ({_signal_name(signum)})"
    return f"{said}; {_checkpoint_note(out)}"


def _who(process_id: int | None, num_processes: int | None) -> tuple[str, str]:
    i = process_id if process_id is not None else os.environ.get("JAX_PROCESS_ID", "?")
    n = num_processes if num_processes is not None else os.environ.get("JAX_NUM_PROCESSES", "?")
    return str(i).strip(), str(n).strip()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _checkpoint_note(out: Path) -> str:
    path = out / "checkpoint.npz"
    if not path.is_file():
        return f"no checkpoint in {printable(out)}"
    where = printable(path)  # --out came from the user
    try:
        import numpy as np

        with np.load(path) as arrays:
            step = json.loads(np.ascontiguousarray(arrays["meta"]).tobytes().decode("utf-8"))["step"]
        return f"the last checkpoint is kept: {where} (step {int(step)}); continue with --resume"
    except Exception:  # noqa: BLE001 - a note on the way out; the file's own problems show on --resume
        return f"the last checkpoint is kept: {where}"


def _write_log(out: Path, process: str, lines) -> None:
    """The C++ log lines, appended to <out>/jax-process-<id>.log where that folder exists."""
    if not lines or not out.is_dir():
        return
    try:
        with open(out / f"jax-process-{process}.log", "ab") as f:
            f.writelines(lines)
    except OSError:
        pass  # the log is a courtesy; the run's outcome is already decided
