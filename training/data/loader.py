"""`BatchLoader`: the samples of a step prepared in worker processes, `prefetch` steps ahead of the model.

Per-sample work (crop, flip, RandAugment) is most of the data cost. Steps go round the workers: step k's
rows (this process's part of the global batch) are prepared whole by worker k mod N, each worker
`prefetch` of its steps ahead, as torch's DataLoader deals out batches; mixing, which needs whole
groups, stays in the consumer (`StepData.assemble`). Cutting every step across all the workers instead
made each step wait for the slowest of them: 2 workers at 224 px gave 668 images/s that way, 718 whole
steps (bench/loader_engines.py). Every draw is keyed by (seed, purpose, step, row), so the images are the
same whatever the number of workers or the depth.

Workers are fresh interpreters (`loader_worker.py`): forking a process whose BLAS and Numba
thread pools are running can deadlock the child. They are plain subprocesses talking over two
pipes, not a multiprocessing pool: no semaphores in /dev/shm and no resource tracker to outlive
a killed trainer, and each worker dies with its parent (see loader_worker.py).

Every worker loads Numba when it can (whatever its parent: the PyTorch and JAX trainers never load it
themselves), so the pipeline takes its Numba kernels there, bit for bit its NumPy ops; a first start on
a machine compiles them once (cache=True). EFFV2_DATA_KERNELS=numpy keeps the workers NumPy only.

Memory: at most N x prefetch + 1 steps are asked at once (a worker keeps computing while its earlier
results wait to be read: loader_worker.py writes them from a thread), so the loader's images in
flight are bounded by (N x prefetch + 1) x rows, whatever the size of the data set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque

import numpy as np

from ..kernel_gate import data_kernels_wanted
from .loader_worker import read_frame, widen_pipe, write_frame

_WORKER_DATA = None  # the StepData of this worker process


class LoaderError(Exception):
    """A worker failed or died; the message is one line."""


def _init_worker(data, numba_kernels: bool) -> None:
    """numba_kernels: load Numba here, so that the pipeline takes its kernels (the same bits); without
    Numba installed the worker runs the NumPy ops.

    The worker keeps freed memory in its heap (kernels/runtime/heap.py; EFFV2_RETAIN_HEAP=0 turns it off): each
    decoded image, crop and batch is a fresh block over glibc's mmap threshold, and a fresh mmap is one page
    fault per 4 KiB touched. Decoding a 500 x 375 JPEG to an array took 2.7 ms that way, 1.0 ms with the
    heap kept (Pillow's own decode: 0.76 ms). The worker's resident size stays at its peak, which its
    bounded row ranges set (see the module's note)."""
    from effv2_reference.kernels.runtime.heap import retain_freed_memory  # glibc mallopt only: loads no Numba

    global _WORKER_DATA
    _WORKER_DATA = data
    retain_freed_memory()
    if numba_kernels:
        try:
            import numba  # noqa: F401 - the pipeline takes its kernel path once Numba is loaded
        except ImportError:
            pass


def _prepare(step: int, start: int, stop: int) -> np.ndarray:
    return _WORKER_DATA.prepare_rows(step, slice(start, stop))


class _Worker:
    """One worker process and its two pipes; `pending` lists the steps asked of it, in order."""

    def __init__(self, data, numba_kernels: bool):
        # a session of its own: the terminal's Ctrl-C goes to the trainer alone, which stops the workers
        self.process = subprocess.Popen([sys.executable, "-m", "effv2_train.data.loader_worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self.pending: deque[int] = deque()
        widen_pipe(self.process.stdout.fileno())
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
    this process; workers = N uses N processes, each preparing whole steps `prefetch` of its own steps
    ahead while the model runs (the results are the same whatever the depth). Use as a context manager so the
    processes stop with the run (on any exception, KeyboardInterrupt included).
    """

    def __init__(self, data, workers: int = 0, rows: slice | None = None, *, prefetch: int = 2):
        if workers < 0:
            raise ValueError(f"workers: must be >= 0 (got {workers})")
        if prefetch < 0:
            raise ValueError(f"prefetch: must be >= 0 (got {prefetch})")
        self.data, self.workers, self.prefetch = data, workers, prefetch
        self.start, self.stop, _ = (rows or slice(0, data.plan.batch_size)).indices(data.plan.batch_size)
        self._procs: list[_Worker] = []
        self._asked: set[int] = set()

    def __enter__(self) -> "BatchLoader":
        try:
            for _ in range(min(self.workers, self.stop - self.start)):
                self._procs.append(_Worker(self.data, data_kernels_wanted()))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        procs, self._procs = self._procs, []
        for w in procs:
            w.stop()
        self._asked.clear()

    def _submit(self, step: int) -> None:
        """Step `step`'s rows, all of them, to the worker whose turn it is (steps go round the workers)."""
        if step not in self._asked and step < self.data.plan.total_steps:
            self._procs[step % len(self._procs)].ask(step, self.start, self.stop)
            self._asked.add(step)

    def rows(self, step: int) -> np.ndarray:
        if not self._procs:
            return self.data.prepare_rows(step, slice(self.start, self.stop))
        # every worker `prefetch` of its own steps ahead: the next steps' images overlap this step's model work
        for ahead in range(len(self._procs) * self.prefetch + 1):
            self._submit(step + ahead)
        out = self._procs[step % len(self._procs)].answer(step)
        # what is still coming: a jump (a resume, a stop) drops the answers asked before it, which may be asked again
        self._asked = set().union(*(w.pending for w in self._procs))
        return out
