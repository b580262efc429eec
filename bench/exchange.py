"""Benchmark: the latency of one exchange between oracle processes (reference/replicas.py), in lockstep.

    python bench/exchange.py [--world 2] [--bytes 512] [--calls 20000] [--json]

Every process makes the same `--calls` exchanges of a float32 message of `--bytes` bytes with no other
work in between, as the BN layers of a training step do: first `group_gather` over all processes (a BN
group's statistics), then `all_sum` (its gradient sums, the loss). Reported per kind: microseconds per
exchange as rank 0 sees them (a round trip: its own copy and poll plus waiting for the slowest peer).
A training step of the default run makes ~30 of them per process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_args import at_least  # noqa: E402


def run(world: int, nbytes: int, calls: int) -> dict:
    from effv2_reference.replicas import run_replicas

    def rank_main(replica):
        a = np.ones(max(nbytes // 4, 1), np.float32)
        out = {}
        for kind, call in (("group_gather", lambda: replica.group_gather(a, world)),
                           ("all_sum", lambda: replica.all_sum(a))):
            for _ in range(200):  # warm-up: both processes in their loops
                call()
            t = time.perf_counter()
            for _ in range(calls):
                call()
            out[f"{kind}_us"] = round((time.perf_counter() - t) / calls * 1e6, 2)
        return out

    row = run_replicas(world, rank_main, capacity_bytes=max(nbytes, 8), timeout_s=120)
    return {"world": world, "bytes": nbytes, "calls": calls, **row}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=at_least(1), default=2)
    ap.add_argument("--bytes", type=at_least(4), default=512)
    ap.add_argument("--calls", type=at_least(1), default=20000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    row = run(args.world, args.bytes, args.calls)
    if args.json:
        print(json.dumps([row]))
    else:
        print(f"{row['world']} processes, {row['bytes']} bytes: group_gather {row['group_gather_us']:.1f} us, "
              f"all_sum {row['all_sum_us']:.1f} us per exchange")


if __name__ == "__main__":
    main()
