"""Oracle processes on one machine that sum arrays through shared memory (data-parallel training).

`run_replicas(world, rank_main)` forks world - 1 children, runs `rank_main(replica)` in every
process (rank 0 in the caller) and returns rank 0's result. Each `Replica` offers the collectives
the oracle's training needs: `all_sum` (loss, accuracy, gradients), `group_gather` and `group_sum`
(BN statistics and their gradients for a group that spans several processes) and `mean` (running
statistics).

Why not torch.distributed or a pipe: a train step of the small CPU variants makes ~30 collective
calls of a few hundred bytes, and a woken-up process on a VM answers a pipe in 20-100 us; here a
message is a copy into the writer's slot of one shared anonymous mapping plus a raised sequence
number, which the other process sees within a microsecond while it spins (it yields the core after a
short spin, and sleeps once a wait is long, e.g. while rank 0 writes a checkpoint). The copy, the fence,
the number and the short spin are one compiled call (kernels/runtime/fence.py): two processes exchanging 512
bytes in lockstep took 20-28 us per exchange with them in Python, 9-11 us so, and each process of the
default run makes ~36 000 exchanges.

Determinism: every process sums the same slots in rank order, so all replicas get bit-identical
sums and their weights stay identical without ever being broadcast. Slots are double-buffered by
the parity of the call count; a process writes call k's slot only after every process has published
call k - 1, i.e. finished reading call k - 2's slots, the last user of that buffer.

Failure: a process that stops (an exception) records its rank and a one-line reason; one that dies
(killed) is noticed by the liveness check; a peer that never arrives fails the wait after
`timeout_s`. Each case raises `ReplicaError` in the others instead of leaving them spinning.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

from .kernels.runtime.fence import fence, publish_and_poll

T = TypeVar("T")

_REASON_BYTES = 1024
_SPIN_POLLS = 2000  # compiled busy polls (~50 ns each) before yielding the core to whoever is runnable
_CHECK_EVERY = 512  # polls between liveness / abort / timeout checks once yielding
_NAP_AFTER_S = 0.02  # a wait this long is not a step's imbalance (a checkpoint, an evaluation): sleep in it


class ReplicaError(RuntimeError):
    """Another process of the group stopped, died or stayed silent past the timeout."""


class SharedGroup:
    """The shared state of `world` processes: sequence numbers, the abort record, two sets of message slots.

    Create it before forking (an anonymous MAP_SHARED mapping is inherited by children).
    """

    def __init__(self, world: int, capacity_bytes: int, timeout_s: float = 600.0):
        if world < 1:
            raise ValueError(f"world must be >= 1, got {world}")
        self.world, self.capacity, self.timeout_s = int(world), max(int(capacity_bytes), 8), float(timeout_s)
        header = 8 * (self.world + 2) + _REASON_BYTES
        header = -(-header // 64) * 64
        slots = 2 * self.world * (-(-self.capacity // 64) * 64)
        self._mem = mmap.mmap(-1, header + slots)
        self.seq = np.frombuffer(self._mem, np.int64, self.world, 0)
        self.stopped_by = np.frombuffer(self._mem, np.int64, 1, 8 * self.world)  # rank + 1 of the first to stop
        self.reason = np.frombuffer(self._mem, np.uint8, _REASON_BYTES, 8 * (self.world + 2))
        stride = -(-self.capacity // 64) * 64
        self.slots = np.frombuffer(self._mem, np.uint8, slots, header).reshape(2, self.world, stride)

    def member(self, rank: int, alive: Callable[[], bool] = lambda: True) -> "Replica":
        if not 0 <= rank < self.world:
            raise ValueError(f"rank must lie in [0, {self.world}), got {rank}")
        return Replica(self, rank, alive)

    def stop(self, rank: int, reason: str) -> None:
        """Record that `rank` stops (first one wins) so that the others leave their waits."""
        if self.stopped_by[0] == 0:
            data = reason.encode("utf-8", "replace")[:_REASON_BYTES - 1]
            self.reason[:] = 0
            self.reason[:len(data)] = np.frombuffer(data, np.uint8)
            fence()
            self.stopped_by[0] = rank + 1
            fence()

    def stop_message(self) -> str:
        rank = int(self.stopped_by[0]) - 1
        text = bytes(self.reason).split(b"\0", 1)[0].decode("utf-8", "replace")
        return f"process {rank} stopped" + (f": {text}" if text else "")


class Replica:
    """One process's handle on a `SharedGroup`: rank, world and the collectives.

    Every process must make the same sequence of calls with arrays of the same shape and dtype.
    """

    def __init__(self, group: SharedGroup, rank: int, alive: Callable[[], bool]):
        self.group, self.rank, self.world = group, rank, group.world
        self._alive = alive
        self._calls = 0

    def all_sum(self, values) -> np.ndarray:
        """The sum of `values` over all processes (rank order, the same bits everywhere)."""
        return self._sum(values, 0, self.world)

    def group_sum(self, values, span: int) -> np.ndarray:
        """The sum over the `span` consecutive ranks that share this rank's block (span divides world)."""
        lo = self._block(span)
        return self._sum(values, lo, lo + span)

    def _block(self, span: int) -> int:
        if span < 1 or self.world % span:
            raise ValueError(f"a span of {span} processes does not divide the {self.world} processes")
        return self.rank // span * span

    def group_gather(self, values, span: int) -> np.ndarray:
        """(span, *values.shape): the values of the `span` ranks of this rank's block, in rank order."""
        lo = self._block(span)
        return self._exchange(values, lambda a, parts: parts.reshape((span,) + a.shape).copy(), lo, lo + span)

    def mean(self, values) -> np.ndarray:
        """The mean of `values` over all processes."""
        return self.all_sum(values) / self.world

    def stop(self, reason: str) -> None:
        self.group.stop(self.rank, reason)

    def _sum(self, values, lo: int, hi: int) -> np.ndarray:
        def add(a, parts):
            out = parts[0].copy()
            for q in range(1, parts.shape[0]):  # rank order: every process gets the same bits
                out += parts[q]
            return out.reshape(a.shape)

        return self._exchange(values, add, lo, hi)

    def _exchange(self, values, combine, lo: int, hi: int) -> np.ndarray:
        """Publish `values`, wait for every process's message of this call, then `combine(values, parts)`
        over the messages of ranks lo..hi-1 (parts: (hi - lo, values.size), a view of the shared slots,
        valid only inside)."""
        a = np.ascontiguousarray(values)
        if a.dtype.hasobject or a.nbytes > self.group.capacity:
            raise ValueError(f"replica message of {a.nbytes} bytes ({a.dtype}) does not fit the "
                             f"{self.group.capacity}-byte slots")
        if self.world == 1:
            return combine(a, a.reshape(1, -1))
        self._calls += 1
        k, g = self._calls, self.group
        buf = g.slots[k & 1]
        # the message, a fence, the sequence number, then a short compiled spin (kernels/runtime/fence.py)
        if not publish_and_poll(buf[self.rank], a.reshape(-1).view(np.uint8), g.seq, self.rank, k, _SPIN_POLLS):
            self._wait(k)
        return combine(a, buf[lo:hi, :a.nbytes].view(a.dtype))

    def _wait(self, k: int) -> None:
        """Until every process has published call k (a full barrier: see the module docstring), after the
        compiled spin found some process still missing: yield the core between polls, sleep in a long wait."""
        seq = self.group.seq
        start = time.monotonic()
        polls = 0
        while seq.min() < k:
            polls += 1
            if polls % _CHECK_EVERY == 0:
                self._check(start, k)
            if time.monotonic() - start > _NAP_AFTER_S:
                time.sleep(0.0002)
            else:
                os.sched_yield()
        fence()  # the messages after the numbers

    def _check(self, start: float, k: int) -> None:
        g = self.group
        if g.stopped_by[0]:
            fence()
            raise ReplicaError(g.stop_message())
        if not self._alive():
            raise ReplicaError("another process of the run died")
        waited = time.monotonic() - start
        if waited > g.timeout_s:
            late = [q for q in range(self.world) if g.seq[q] < k]
            raise ReplicaError(f"process(es) {', '.join(map(str, late))} sent nothing for {waited:.0f} s "
                               "(--timeout)")


@dataclass
class _Child:
    rank: int
    process: multiprocessing.Process


def run_replicas(world: int, rank_main: Callable[[Replica], T], *, capacity_bytes: int,
                 timeout_s: float = 600.0) -> T:
    """`rank_main(replica)` in `world` processes (rank 0 here, the others forked); rank 0's result.

    A child's failure is raised here as `ReplicaError` (its one-line reason), unless rank 0 fails
    first, whose exception then propagates; children never outlive this call. Children skip the
    parent's exit handlers (`os._exit`), so buffered output is never written twice.
    """
    group = SharedGroup(world, capacity_bytes, timeout_s)
    if world == 1:
        return rank_main(group.member(0))
    if "fork" not in multiprocessing.get_all_start_methods():
        raise ReplicaError("several oracle processes need the 'fork' start method (Linux, macOS)")
    ctx = multiprocessing.get_context("fork")
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    children: list[_Child] = []
    grace = 1.0  # seconds a child gets to leave after a failure (it is waiting on the group, or hung)
    try:
        for rank in range(1, world):
            p = ctx.Process(target=_child_main, args=(group, rank, rank_main, parent), name=f"effv2-replica-{rank}")
            p.start()
            children.append(_Child(rank, p))
        replica = group.member(0, alive=lambda: all(c.process.is_alive() or c.process.exitcode == 0
                                                    for c in children))
        try:
            result = rank_main(replica)
        except ReplicaError:
            raise
        except BaseException as exc:
            group.stop(0, _one_line(exc))
            raise
        for c in children:
            c.process.join(timeout_s)
        grace = 5.0
        failed = [c for c in children if c.process.exitcode != 0]
        if failed:
            raise ReplicaError(group.stop_message() if group.stopped_by[0] else
                               f"process {failed[0].rank} ended with exit code {failed[0].process.exitcode}")
        return result
    finally:
        for c in children:
            if c.process.is_alive():
                c.process.join(grace)
            if c.process.is_alive():
                c.process.kill()
                c.process.join()


def _child_main(group: SharedGroup, rank: int, rank_main, parent: int) -> None:
    code = 1
    try:
        rank_main(group.member(rank, alive=lambda: os.getppid() == parent))
        code = 0
    except ReplicaError:
        pass  # another process stopped first: its reason is the one to report
    except BaseException as exc:  # noqa: BLE001 - reported through the group, in one line
        group.stop(rank, _one_line(exc))
    finally:
        os._exit(code)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
