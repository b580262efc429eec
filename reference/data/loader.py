"""`BatchLoader`: the samples of a step prepared in worker processes, one step ahead of the model.

Per-sample work (crop, flip, RandAugment) is most of the data cost and independent per row,
so the global batch is cut into contiguous row ranges, one per worker; mixing, which needs
whole groups, stays in the consumer (`StepData.assemble`). Every draw is keyed by
(seed, purpose, step, row), so the images are the same whatever the number of workers.

Workers are started with 'spawn' (a fresh interpreter): forking a process whose BLAS and
Numba thread pools are running can deadlock the child.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

_WORKER_DATA = None  # the StepData of this worker process


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


class BatchLoader:
    """`rows(step)` -> uint8 (rows, size, size, C): the prepared images of `rows` of step `step`.

    `rows` defaults to the whole global batch (a replica passes its shard). workers = 0 prepares in
    this process; workers = N uses N processes and prefetches the next step. Use as a context
    manager so the processes stop with the run.
    """

    def __init__(self, data, workers: int = 0, rows: slice | None = None):
        if workers < 0:
            raise ValueError(f"workers: must be >= 0 (got {workers})")
        self.data, self.workers = data, workers
        self.start, self.stop, _ = (rows or slice(0, data.plan.batch_size)).indices(data.plan.batch_size)
        self._pool: ProcessPoolExecutor | None = None
        self._pending: dict[int, list[Future]] = {}

    def __enter__(self) -> "BatchLoader":
        if self.workers > 0:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker,
                                             initargs=(self.data, "numba" in sys.modules))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def _chunks(self) -> list[tuple[int, int]]:
        b = self.stop - self.start
        n = min(self.workers, b)
        edges = [self.start + round(i * b / n) for i in range(n + 1)]
        return [(edges[i], edges[i + 1]) for i in range(n)]

    def _submit(self, step: int) -> None:
        if step not in self._pending and step < self.data.plan.total_steps:
            self._pending[step] = [self._pool.submit(_prepare, step, a, b) for a, b in self._chunks()]

    def rows(self, step: int) -> np.ndarray:
        if self._pool is None:
            return self.data.prepare_rows(step, slice(self.start, self.stop))
        self._submit(step)
        futures = self._pending.pop(step)
        self._submit(step + 1)  # overlap the next step's images with this step's model work
        return np.concatenate([f.result() for f in futures])
