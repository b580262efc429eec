"""`BatchLoader`: the samples of a step prepared in worker processes, one step ahead of the model.

Per-sample work (crop, flip, RandAugment) is most of the data cost and independent per row,
so the global batch is cut into contiguous row ranges, one per worker; mixing, which needs
whole groups, stays in the consumer (`StepData.assemble`). Every draw is keyed by
(seed, purpose, step, row), so the images are the same whatever the number of workers.

Workers are fresh interpreters (`loader_worker.py`): forking a process whose BLAS and Numba
thread pools are running can deadlock the child. They are plain subprocesses talking over two
pipes, not a multiprocessing pool: no semaphores in /dev/shm and no resource tracker to outlive
a killed trainer, and each worker dies with its parent (see loader_worker.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque

import numpy as np

from .loader_worker import read_frame, write_frame

_WORKER_DATA = None  # the StepData of this worker process


class LoaderError(Exception):
    """A worker failed or died; the message is one line."""


def _init_worker(data, numba_kernels: bool) -> None:
    """numba_kernels: the parent had Numba loaded (the oracle), so the pipeline's kernels are wanted here too
    (the framework trainers' workers stay NumPy only, as their parents are)."""
    global _WORKER_DATA
    _WORKER_DATA = data
    if numba_kernels:
        try:
            import numba  # noqa: F401 - the pipeline takes its kernel path once Numba is loaded
        except ImportError:  # pragma: no cover - the parent had it
            pass


def _prepare(step: int, start: int, stop: int) -> np.ndarray:
    return _WORKER_DATA.prepare_rows(step, slice(start, stop))


class _Worker:
    """One worker process and its two pipes; `pending` lists the steps asked of it, in order."""

    def __init__(self, data, numba_kernels: bool):
        # a session of its own: the terminal's Ctrl-C goes to the trainer alone, which stops the workers
        self.process = subprocess.Popen([sys.executable, "-m", "effv2_reference.data.loader_worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self.pending: deque[int] = deque()
        write_frame(self.process.stdin.fileno(), (os.getpid(), data, numba_kernels))

    def ask(self, step: int, start: int, stop: int) -> None:
        try:
            write_frame(self.process.stdin.fileno(), (step, start, stop))
        except BrokenPipeError:
            raise self._ended() from None
        self.pending.append(step)

    def answer(self, step: int) -> np.ndarray:
        """The rows asked for `step` (answers to steps asked before it and not wanted any more are dropped)."""
        while self.pending:
            asked = self.pending.popleft()
            try:
                kind, value = read_frame(self.process.stdout.fileno())
            except EOFError:
                raise self._ended() from None
            if kind != "ok":
                raise LoaderError(f"a data loader process failed at step {asked}: {value}")
            if asked == step:
                return value
        raise LoaderError(f"step {step} was never asked of a data loader process")

    def _ended(self) -> LoaderError:
        return LoaderError(f"a data loader process ended (exit code {self.process.wait()})")

    def stop(self) -> None:
        """Kill at once: a worker holds nothing worth saving, and one blocked writing a result would not read EOF."""
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass


class BatchLoader:
    """`rows(step)` -> uint8 (rows, size, size, C): the prepared images of `rows` of step `step`.

    `rows` defaults to the whole global batch (a replica passes its shard). workers = 0 prepares in
    this process; workers = N uses N processes and prefetches the next step. Use as a context
    manager so the processes stop with the run (on any exception, KeyboardInterrupt included).
    """

    def __init__(self, data, workers: int = 0, rows: slice | None = None):
        if workers < 0:
            raise ValueError(f"workers: must be >= 0 (got {workers})")
        self.data, self.workers = data, workers
        self.start, self.stop, _ = (rows or slice(0, data.plan.batch_size)).indices(data.plan.batch_size)
        self._procs: list[_Worker] = []
        self._asked: set[int] = set()

    def __enter__(self) -> "BatchLoader":
        try:
            for _ in range(min(self.workers, self.stop - self.start)):
                self._procs.append(_Worker(self.data, "numba" in sys.modules))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        procs, self._procs = self._procs, []
        for w in procs:
            w.stop()
        self._asked.clear()

    def _chunks(self) -> list[tuple[int, int]]:
        b = self.stop - self.start
        n = len(self._procs)
        edges = [self.start + round(i * b / n) for i in range(n + 1)]
        return [(edges[i], edges[i + 1]) for i in range(n)]

    def _submit(self, step: int) -> None:
        if step not in self._asked and step < self.data.plan.total_steps:
            for w, (a, b) in zip(self._procs, self._chunks()):
                w.ask(step, a, b)
            self._asked.add(step)

    def rows(self, step: int) -> np.ndarray:
        if not self._procs:
            return self.data.prepare_rows(step, slice(self.start, self.stop))
        self._submit(step)
        self._submit(step + 1)  # overlap the next step's images with this step's model work
        self._asked.discard(step)
        return np.concatenate([w.answer(step) for w in self._procs])
