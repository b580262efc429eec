"""Benchmark: eval-mode forward of efficientnetv2-s at 224x224, batch 8, float32, oracle vs PyTorch CPU.

    python bench/forward_v2s.py [--size 224] [--batch 8] [--repeats 5] [--threads 1] [--json]

Both sides use `--threads N` (see train_step.py); the forwards are interleaved. The row also gives
the achieved GFLOP/s of each side (2 x the MACs of `effv2_spec.accounting` per image / median
time) next to NumPy's sgemm GFLOP/s on a 2048^3 product with N BLAS threads (the practical ceiling),
and the kernel set NumPy's OpenBLAS runs (train_step.blas_kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import _heap, _median_ms, blas_kernels, interleaved, set_threads  # noqa: E402,F401


def sgemm_gflops(threads: int, n: int = 2048, reps: int = 3) -> float:
    """NumPy float32 matmul GFLOP/s (best of `reps`) with `threads` BLAS threads."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ a
        best = min(_t(lambda: a @ a) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _t(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="efficientnetv2-s")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="threads for both sides (torch, BLAS, OpenMP, Numba)")
    ap.add_argument("--no-retain-heap", dest="retain_heap", action="store_false",
                    help="let glibc return freed memory to the OS (page faults every forward, on both sides)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    limits = set_threads(args.threads, args.retain_heap)  # noqa: F841

    import torch

    from effv2_reference.model import ReferenceModel
    from effv2_spec.accounting import count
    from effv2_spec.resolve import resolve
    from torch_walker import build_torch_model

    model = ReferenceModel(args.spec, dtype="float32", seed=0)
    tmodel, how = build_torch_model(model.resolved, model.state_dict(), torch.float32)
    tmodel.eval()
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        t = interleaved({"oracle": lambda: model.forward(x), "torch": lambda: tmodel(xt)}, args.repeats, warmup=1)
        ref = tmodel(xt).numpy()
    err = float(np.abs(ref - model.forward(x)).max() / np.abs(ref).max())
    gflop = 2 * count(resolve(model.resolved.spec, args.size)).macs * args.batch / 1e9
    o, p = t["oracle"], t["torch"]
    row = {"config": f"{args.spec} eval forward batch {args.batch} {args.size}x{args.size} float32",
           "threads": args.threads, "oracle_ms": round(o["median_ms"], 1),
           "oracle_spread_ms": [round(o["min_ms"], 1), round(o["max_ms"], 1)], "oracle_cpu_ms": round(o["cpu_ms"], 1),
           "torch_ms": round(p["median_ms"], 1), "torch_spread_ms": [round(p["min_ms"], 1), round(p["max_ms"], 1)],
           "torch_cpu_ms": round(p["cpu_ms"], 1), "ratio": round(o["median_ms"] / p["median_ms"], 3),
           "gflop": round(gflop, 2), "oracle_gflops": round(gflop / o["median_ms"] * 1e3, 1),
           "torch_gflops": round(gflop / p["median_ms"] * 1e3, 1), "sgemm_gflops": round(sgemm_gflops(args.threads), 1),
           "logit_rel_err": err, "torch_model": how, "heap": _heap(), "blas": blas_kernels(),
           "load1": round(os.getloadavg()[0], 2)}
    if args.json:
        print(json.dumps([row], indent=2))
    else:
        print(f"{row['config']}, {args.threads} thread(s): oracle {row['oracle_ms']:.0f} ms "
              f"[{row['oracle_spread_ms'][0]:.0f}-{row['oracle_spread_ms'][1]:.0f}] ({row['oracle_gflops']} GFLOP/s), "
              f"torch {row['torch_ms']:.0f} ms [{row['torch_spread_ms'][0]:.0f}-{row['torch_spread_ms'][1]:.0f}] "
              f"({row['torch_gflops']} GFLOP/s), ratio {row['ratio']:.2f}; sgemm {row['sgemm_gflops']} GFLOP/s; "
              f"logit rel err {err:.1e}; BLAS {row['blas']}; load {row['load1']}")


if __name__ == "__main__":
    main()
