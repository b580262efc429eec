"""One step's images from a loader worker to the trainer: effv2's frames (pickle protocol 5, the arrays' bytes out
of band, read straight into their buffers, a 1 MiB pipe) against an in-band pickle through a default pipe (how the
loader sent them until 2026-12-08: dumped whole, read in chunks, joined, loaded: two more copies on each side).

    python bench/loader_transfer.py [--size 224] [--batch 32] [--steps 60] [--runs 3]

A forked writer sends `--steps` frames of a uint8 (batch, size, size, 3) array; the figures are CPU milliseconds
per step of the reader (the trainer's share) and of the writer (a loader worker's), and wall milliseconds per step,
median [min-max] over runs. Both sides check the bytes arrive intact.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import struct
import time

import numpy as np

from cli_args import at_least
from effv2_train.data.loader_worker import read_frame, widen_pipe, write_frame

_LEN = struct.Struct("<Q")


def write_in_band(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    for part in (_LEN.pack(len(data)), data):
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view):]


def read_in_band(fd: int):
    def exactly(n: int) -> bytes:
        chunks = []
        while n:
            chunk = os.read(fd, min(n, 1 << 24))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    return pickle.loads(exactly(_LEN.unpack(exactly(_LEN.size))[0]))


METHODS = {"effv2 frames": (write_frame, read_frame, True), "in-band pickle": (write_in_band, read_in_band, False)}


def measure(method: str, images: np.ndarray, steps: int) -> tuple[float, float, float]:
    """(reader CPU ms, writer CPU ms, wall ms) per step."""
    write, read, widen = METHODS[method]
    r, w = os.pipe()
    if widen:
        widen_pipe(w)
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: a loader worker
        os.close(r)
        c0 = time.process_time()
        for _ in range(steps):
            write(w, ("ok", images))
        os.write(report_w, struct.pack("<d", time.process_time() - c0))
        os._exit(0)
    os.close(w)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        kind, got = read(r)
    reader, wall = time.process_time() - c0, time.perf_counter() - t0
    (writer,) = struct.unpack("<d", os.read(report_r, 8))
    os.waitpid(pid, 0)
    for fd in (r, report_r, report_w):
        os.close(fd)
    if kind != "ok" or not np.array_equal(got, images):
        raise SystemExit(f"loader_transfer: {method} did not deliver the array intact")
    return tuple(1e3 * v / steps for v in (reader, writer, wall))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=at_least(1), default=224)
    ap.add_argument("--batch", type=at_least(1), default=32)
    ap.add_argument("--steps", type=at_least(1), default=60)
    ap.add_argument("--runs", type=at_least(1), default=3)
    args = ap.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    results = {m: [] for m in METHODS}
    for _ in range(args.runs):
        for m in METHODS:
            results[m].append(measure(m, images, args.steps))
    print(f"one step of {args.batch} x {args.size} x {args.size} x 3 uint8 ({images.nbytes / 2**20:.1f} MiB), "
          f"{args.steps} steps, {args.runs} runs: ms per step, median [min-max]")
    for m, runs in results.items():
        cells = []
        for k, what in enumerate(("reader CPU", "writer CPU", "wall")):
            v = [r[k] for r in runs]
            cells.append(f"{what} {statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]")
        print(f"  {m:15s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
