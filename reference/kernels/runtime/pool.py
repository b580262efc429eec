"""One small thread pool for every parallel kernel of the oracle, BLAS calls included.

Work is split into contiguous pieces of rows (channels, or channel x group rows for batch
norm; columns = samples for the GEMMs); each piece is the same computation the one-thread
path does on those rows, so the results do not depend on the thread count (tested). The
pool is a `ThreadPoolExecutor`: its idle workers block on a lock instead of spinning, and
the Numba kernels (nogil) and NumPy's BLAS calls release the GIL. With more than one
thread, NumPy's BLAS is limited to one thread per call (threadpoolctl), so N threads here
are N busy cores, not N x BLAS threads fighting over them; that is what made Numba's
`parallel=True` plus OpenBLAS's own threads 4-6x slower (bench/README.md).

Default: one thread (plain serial calls, no pool), or the EFFV2_NUM_THREADS environment variable
read at import (so `EFFV2_NUM_THREADS=2 effv2 train` uses two). `set_num_threads(n)` sets it later.
Small work is never split: a dispatch costs ~25 us back to back and more after the worker has gone
to sleep (a woken vCPU), so a piece must hold at least `MIN_CHUNK` values. One piece per thread:
on the 2-core VM, 4 pieces per thread made every call of a nano train step slower (a 64 px step
154 ms against 101 ms with one piece each, interleaved in one process, bench/README.md). Pieces are
taken from a shared counter, so on a machine whose cores are busy with other processes the caller
does the work itself instead of waiting for a worker thread to be scheduled.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

MIN_CHUNK = 1 << 17  # values per piece below which splitting does not pay (measured: 2^15 lost at 32 px)
PIECES_PER_THREAD = 1

_threads = 1
_pool: ThreadPoolExecutor | None = None
_blas_limit = None
_lock = threading.Lock()


def num_threads() -> int:
    return _threads


def set_num_threads(n: int) -> None:
    """Use n threads (n >= 1) for the oracle's kernels; with n > 1, NumPy's BLAS runs one thread per call."""
    global _threads, _pool, _blas_limit
    n = max(1, int(n))
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    _threads = n
    if n > 1:  # the pool itself starts on first use (and again in a forked child: see _after_fork)
        if _blas_limit is None:
            try:
                from threadpoolctl import threadpool_limits
                _blas_limit = threadpool_limits(limits=1, user_api="blas")
            except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
                pass
    elif _blas_limit is not None:
        _blas_limit.restore_original_limits()
        _blas_limit = None


def chunks(n: int, work_per_item: int = 1, align: int = 1) -> list[tuple[int, int]]:
    """Split range(n) into contiguous (lo, hi) pieces of >= MIN_CHUNK values each, up to PIECES_PER_THREAD
    per thread (see parallel_for for who takes them)."""
    k = min(_threads * PIECES_PER_THREAD if _threads > 1 else 1, max(1, (n * work_per_item) // MIN_CHUNK),
            max(1, n // align))
    if k <= 1:
        return [(0, n)]
    step = -(-n // k)
    step = -(-step // align) * align
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def parallel_for(fn, n: int, work_per_item: int = 1, align: int = 1) -> None:
    """fn(lo, hi) over contiguous pieces of range(n). The calling thread and the pool's workers take
    pieces from one shared counter until none is left, so the caller never waits for a worker that the
    OS has not scheduled (a loaded machine): it only waits for pieces a worker has already started."""
    global _pool
    if _threads == 1:  # the default: no pieces to plan (this runs ~120 times a training step)
        fn(0, n)
        return
    parts = chunks(n, work_per_item, align)
    if len(parts) == 1:
        fn(0, n)
        return
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_threads - 1, thread_name_prefix="effv2-kernel")
        pool = _pool
    counter = itertools.count()  # next() on it is atomic under the GIL
    errors: list[BaseException] = []
    done = threading.Semaphore(0)

    def drain():
        while True:
            i = next(counter)
            if i >= len(parts):
                return
            try:
                fn(*parts[i])
            except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
                errors.append(e)
            finally:
                done.release()

    for _ in range(min(_threads - 1, len(parts) - 1)):
        pool.submit(drain)
    drain()
    for _ in parts:  # every piece released once, by whoever ran it
        done.acquire()
    if errors:
        raise errors[0]


def _after_fork() -> None:
    """A forked child has the executor object but not its threads: forget it, start a new one on use."""
    global _pool
    _pool = None


def _from_env() -> None:
    v = os.environ.get("EFFV2_NUM_THREADS", "").strip()
    if v:
        try:
            n = int(v)
        except ValueError:
            raise ValueError(f"EFFV2_NUM_THREADS must be a positive integer, got {v!r}") from None
        set_num_threads(n)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
_from_env()
