"""One training run per output folder: an OS lock held for the run's life, taken before anything is checked there.

`hold(folder)` creates the folder if needed (so an unwritable `--out` is found at start, not at
the first checkpoint, minutes in), proves a file can be created in it, and takes an exclusive
`flock` on `.effv2-run.lock` there. The kernel drops the lock when the holder ends, however it
ends (a SIGKILL included), so a killed run never blocks the next. A second run gets one line
naming the holder's process id. At exit the lock file is removed, and a folder this run created
is removed again if the run left nothing in it (a refused command leaves no trace).
"""

from __future__ import annotations

import atexit
import errno
import os
import tempfile
from pathlib import Path

LOCK_NAME = ".effv2-run.lock"


class RunLockError(ValueError):
    """The folder cannot be used: another run holds it, or it cannot be written."""


class _Held:
    def __init__(self, folder: Path, fd: int, created: bool):
        self.folder, self.fd, self.created, self.pid = folder, fd, created, os.getpid()

    def release(self) -> None:
        if os.getpid() != self.pid:  # a forked child inherits the exit handler, not the lock's ownership
            return
        try:
            os.unlink(self.folder / LOCK_NAME)  # while still held: a waiting run then finds a new file (hold)
        except OSError:
            pass
        os.close(self.fd)
        if self.created:
            try:
                self.folder.rmdir()  # only if empty: a run that wrote anything keeps its folder
            except OSError:
                pass


_held: dict[Path, _Held] = {}


def hold(folder: Path) -> None:
    """Create `folder` if needed and hold its run lock until this process exits; RunLockError if not possible."""
    import fcntl

    key = folder.resolve()
    if key in _held:
        return
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".effv2-probe.")  # an existing lock file proves nothing
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunLockError(f"{folder}: cannot write ({exc.strerror or exc})") from None
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockError(f"{folder}: cannot lock ({exc.strerror or exc})") from None
            who = f"process {holder}" if holder else "another process"
            raise RunLockError(f"{folder}: another run ({who}) is writing to this folder; "
                               "wait for it to end or choose another --out") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder removed this file as it released it: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    held = _held[key] = _Held(folder, fd, created)
    atexit.register(held.release)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
