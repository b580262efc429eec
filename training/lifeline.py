"""Child processes that end with their parent, however the parent ends (SIGKILL included).

Linux sends a chosen signal to a process when its parent dies if the process asked for it
(prctl PR_SET_PDEATHSIG); the request survives exec. `tied_to_parent(cmd)` wraps a command in a
small Python trampoline that makes the request and then execs the command, so the caller needs
no `preexec_fn` (unsafe in a process with threads). With `cleanup`, a supervisor stays between
the two instead: when the parent dies it stops the command and removes the parent's temporary
folder, which a SIGKILLed parent cannot do. Elsewhere (no prctl) the parent's own means remain.
"""

from __future__ import annotations

import os
import signal
import sys

_TRAMPOLINE = ("import os, sys; from effv2_train.lifeline import ask_parent_death_signal; "
               "ask_parent_death_signal(int(sys.argv[1]), int(sys.argv[2])); os.execvp(sys.argv[3], sys.argv[3:])")


def ask_parent_death_signal(sig: int, parent: int) -> bool:
    """Ask for `sig` when the parent dies; end at once if `parent` has already gone. False where unsupported."""
    supported = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            supported = libc.prctl(1, int(sig), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            supported = False
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    return supported


def tied_to_parent(cmd: list[str], sig: int = signal.SIGTERM, cleanup: str | os.PathLike | None = None) -> list[str]:
    """`cmd` started so that it receives `sig` when this process dies.

    cleanup: a folder to remove after `cmd` has stopped, when this process dies first (the command runs
    under a small supervisor then, instead of being exec'd in place)."""
    if cleanup is None:
        return [sys.executable, "-c", _TRAMPOLINE, str(int(sig)), str(os.getpid()), *cmd]
    return [sys.executable, "-c", _SUPERVISOR, str(int(sig)), str(os.getpid()), os.fspath(cleanup), *cmd]


_SUPERVISOR = "from effv2_train.lifeline import supervise; supervise()"


def supervise() -> None:
    """sys.argv = [-c, sig, parent, folder, cmd...]: run cmd; if the parent dies, stop cmd with sig, remove folder."""
    import shutil
    import subprocess
    import threading

    sig, parent, folder, cmd = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    # Ctrl-C reaches the command itself (same process group); a handler, unlike SIG_IGN, is not inherited
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    child = subprocess.Popen(tied_to_parent(cmd, sig))  # a SIGKILLed supervisor (a timeout) still stops it
    stopped = []

    def stop(signum, frame):  # only signals here: the main thread is inside child.wait(), which holds a lock
        stopped.append(signum)
        _signal(child.pid, sig)
        threading.Timer(10.0, _signal, (child.pid, signal.SIGKILL)).start()

    signal.signal(signal.SIGTERM, stop)
    ask_parent_death_signal(signal.SIGTERM, parent)
    code = child.wait()
    if stopped and os.getppid() != parent:  # the parent died: nobody else will remove its folder
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(128 + stopped[0] if stopped else code if code >= 0 else 128 - code)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
