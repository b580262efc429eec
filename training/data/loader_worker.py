"""The worker side of `BatchLoader`: a fresh interpreter that prepares row ranges of steps on request.

Started by `loader.BatchLoader` as `python -m effv2_train.data.loader_worker` with two pipes:
requests arrive on stdin, results leave on the file descriptor that was stdout (stdout itself is
pointed at stderr, so a library's print cannot corrupt a frame). Each message is one frame: an
8-byte length, then a pickle. Both ends are this project's own processes; nothing read from a
user's file is unpickled here.

It dies with its parent, whatever kills the parent: the kernel sends SIGKILL when the parent
thread ends (Linux PR_SET_PDEATHSIG), a watch thread checks the parent id (elsewhere), and a
request pipe that reaches end-of-file ends it too. It ignores SIGINT: the trainer alone answers
Ctrl-C and stops its workers. It uses no multiprocessing machinery, so nothing (semaphores, a
resource tracker) is left in /dev/shm or in the process table after any kill.

Results leave from a writer thread, in the order asked: a result larger than the pipe's buffer would
otherwise block the worker until the trainer reads it, and the steps asked ahead (the loader's prefetch)
would wait unprepared. The trainer asks at most prefetch + 1 steps ahead, which bounds the queue.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import sys
import threading
import time

_HEADER = struct.Struct("<Q")
_PARENT_POLL_S = 0.5


def write_frame(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    for part in (_HEADER.pack(len(data)), data):  # two writes: no copy of a large payload
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view):]


def read_frame(fd: int):
    """The next object on `fd`; EOFError when the other end has closed it."""
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            raise EOFError("the other end closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _die_with_parent(parent: int) -> None:
    from ..lifeline import ask_parent_death_signal

    ask_parent_death_signal(signal.SIGKILL, parent)  # Linux: the kernel kills this process with its parent

    def watch():  # elsewhere, and as a second line: the parent id changes when the parent dies
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="effv2-parent-watch").start()


def _start_writer(results: int) -> queue.SimpleQueue:
    """A thread writing each reply put on the returned queue to `results`, in order."""
    replies: queue.SimpleQueue = queue.SimpleQueue()

    def write():
        try:
            while True:
                write_frame(results, replies.get())
        except (BrokenPipeError, OSError):
            os._exit(0)  # the trainer stopped reading: it finished or stopped

    threading.Thread(target=write, daemon=True, name="effv2-loader-writer").start()
    return replies


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, results = sys.stdin.fileno(), os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    from . import loader

    try:
        parent, data, numba_kernels = read_frame(requests)
        _die_with_parent(parent)
        loader._init_worker(data, numba_kernels)
        replies = _start_writer(results)
        while True:
            step, start, stop = read_frame(requests)
            try:
                reply = ("ok", loader._prepare(step, start, stop))
            except Exception as exc:  # noqa: BLE001 - handed to the trainer, which reports it
                reply = ("error", f"{type(exc).__name__}: {exc}")
            replies.put(reply)
    except (EOFError, BrokenPipeError):
        pass  # the trainer finished or stopped: leave quietly
    os._exit(0)


if __name__ == "__main__":
    main()
