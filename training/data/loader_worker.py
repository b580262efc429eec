"""The worker side of `BatchLoader`: a fresh interpreter that prepares row ranges of steps on request.

Started by `loader.BatchLoader` as `python -m effv2_train.data.loader_worker` with two pipes:
requests arrive on stdin, results leave on the file descriptor that was stdout (stdout itself is
pointed at stderr, so a library's print cannot corrupt a frame). Each message is one frame: the lengths,
a pickle (protocol 5), then the raw bytes of its arrays (out of band: no copy into or out of the
pickle). Both ends are this project's own processes; nothing read from a user's file is unpickled here.

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

_HEADER = struct.Struct("<QQ")  # the pickle's length, the number of out-of-band buffers
_LENGTH = struct.Struct("<Q")
_PARENT_POLL_S = 0.5
_PIPE_BYTES = 1 << 20  # Linux's default ceiling for an unprivileged F_SETPIPE_SZ


def widen_pipe(fd: int) -> None:
    """A 1 MiB pipe buffer instead of 64 KiB (Linux): a step of images crosses in a few writes, not dozens of
    writer/reader wake-ups. Elsewhere, or refused, the default stays."""
    import fcntl

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
    except OSError:
        pass


def write_frame(fd: int, obj) -> None:
    """`obj` as a pickle (protocol 5) whose arrays travel out of band: their bytes are written from the arrays
    themselves and read straight into the reader's buffers, not copied into and out of the pickle."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    head = _HEADER.pack(len(data), len(raws)) + b"".join(_LENGTH.pack(r.nbytes) for r in raws)
    for part in (head, data, *raws):
        view = memoryview(part).cast("B")
        while view:
            view = view[os.write(fd, view):]


def read_frame(fd: int):
    """The next object on `fd`; EOFError when the other end has closed it."""
    size, count = _HEADER.unpack(_read_into(fd, bytearray(_HEADER.size)))
    lengths = [_LENGTH.unpack(_read_into(fd, bytearray(_LENGTH.size)))[0] for _ in range(count)]
    data = _read_into(fd, bytearray(size))
    return pickle.loads(data, buffers=[_read_into(fd, bytearray(n)) for n in lengths])


def _read_into(fd: int, buf: bytearray) -> bytearray:
    """`buf` filled from `fd` (no intermediate chunks to join)."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = os.readv(fd, [view[got:]])
        if not n:
            raise EOFError("the other end closed the pipe")
        got += n
    return buf


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
    widen_pipe(results)
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
