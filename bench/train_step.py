"""Benchmark: one training step (forward, backward, SGD momentum step; float32, train mode),
oracle (NumPy/Numba) vs PyTorch CPU on the same spec and weights, in the same process.

    python bench/train_step.py [--spec efficientnetv2-nano] [--batch 32] [--sizes 32 64 128]
                               [--threads 1] [--steps 20] [--block 3] [--no-retain-heap] [--json]

Both sides run with `--threads N`: torch.set_num_threads(N), a threadpoolctl limit of N on every
BLAS / OpenMP pool in the process (OpenBLAS, torch's libgomp), and
`effv2_reference.kernels.runtime.pool.set_num_threads(N)`: the oracle's kernels and GEMMs split their work by
channel / sample blocks over N threads of one pool (NumPy's BLAS then runs one thread per call).
Freed memory stays in the process heap for both sides (as in `effv2 train`; --no-retain-heap: not).
The sides alternate in blocks of `--block` steps, the first of each block untimed (oracle x3, torch x3,
...), so that a load change on a shared machine hits both sides alike while each side is timed in its
own steady state. Reported per side: median wall time, its spread
(min-max), and the median CPU time (process_time: all threads of the process), plus
ratio = oracle / torch of the medians (< 1: oracle faster), the 1-minute load average, and the kernel
set NumPy's OpenBLAS runs (threadpoolctl's "architecture"; OPENBLAS_CORETYPE overrides its detection,
and some machines set it: bench/README.md, eighth round).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def set_threads(n: int, retain_heap: bool = True):
    """Limit torch, BLAS, OpenMP and the oracle's kernel pool to n threads; returns the threadpoolctl context.

    With retain_heap, freed memory stays in the process heap (effv2_reference.kernels.runtime.heap, as `effv2 train`
    does): both sides then reuse their activations' pages instead of page-faulting them in every step.
    """
    from threadpoolctl import threadpool_limits

    if retain_heap:
        from effv2_reference.kernels.runtime.heap import retain_freed_memory
        retain_freed_memory()

    import torch
    torch.set_num_threads(n)
    limits = threadpool_limits(limits=n)
    from effv2_reference.kernels.runtime.pool import set_num_threads
    set_num_threads(n)
    return limits


def _timed(step):
    t, c = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - t, time.process_time() - c


def interleaved(steps_by_name: dict, reps: int, warmup: int = 3, block: int = 1) -> dict:
    """{name: {median_ms, min_ms, max_ms, cpu_ms}} timing each step in turn, `reps` timed runs per step.

    block > 1: each step runs `block` times in a row and the first run of each block is not timed, so a
    side is measured in its own steady state, not in the wake of the other side's threads (torch's OpenMP
    workers spin for milliseconds after a step; the oracle's pool workers sleep).
    """
    for _ in range(warmup):
        for step in steps_by_name.values():
            step()
    wall = {k: [] for k in steps_by_name}
    cpu = {k: [] for k in steps_by_name}
    timed_per_block = max(1, block - 1)
    for _ in range(-(-reps // timed_per_block)):
        for name, step in steps_by_name.items():
            if block > 1:
                step()
            for _ in range(timed_per_block):
                w, c = _timed(step)
                wall[name].append(w * 1000)
                cpu[name].append(c * 1000)
    return {k: {"median_ms": statistics.median(wall[k]), "min_ms": min(wall[k]), "max_ms": max(wall[k]),
                "cpu_ms": statistics.median(cpu[k])} for k in steps_by_name}


def _median_ms(step, steps: int, warmup: int = 3) -> float:
    return interleaved({"x": step}, steps, warmup)["x"]["median_ms"]


def oracle_step_fn(model, x, labels, lr=0.01, momentum=0.9):
    from effv2_reference.ops import softmax_cross_entropy

    velocity = {k: np.zeros_like(v) for k, v in model.params.items()}

    def step():
        logits = model.forward(x, training=True)
        _, dlogits = softmax_cross_entropy(logits, labels)
        grads = model.backward(dlogits)
        for name, p in model.params.items():  # PyTorch SGD, dampening 0: v = m v + g; w -= lr v
            v = velocity[name]
            v *= momentum
            v += grads[name]
            p -= lr * v
    return step


def torch_step_fn(model, x, labels, lr=0.01, momentum=0.9):
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    return step


def _row(config, threads, t, how):
    o, p = t["oracle"], t["torch"]
    return {"config": config, "threads": threads, "oracle_ms": round(o["median_ms"], 2),
            "oracle_spread_ms": [round(o["min_ms"], 2), round(o["max_ms"], 2)], "oracle_cpu_ms": round(o["cpu_ms"], 2),
            "torch_ms": round(p["median_ms"], 2), "torch_spread_ms": [round(p["min_ms"], 2), round(p["max_ms"], 2)],
            "torch_cpu_ms": round(p["cpu_ms"], 2), "ratio": round(o["median_ms"] / p["median_ms"], 3),
            "cpu_ratio": round(o["cpu_ms"] / p["cpu_ms"], 3), "torch_model": how,
            "heap": _heap(), "blas": blas_kernels(), "load1": round(os.getloadavg()[0], 2)}


def blas_kernels() -> str:
    """NumPy's BLAS and the kernel set it runs, e.g. "openblas Haswell (OPENBLAS_CORETYPE=Haswell)"."""
    from threadpoolctl import threadpool_info
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    names = sorted({f"{p.get('internal_api')} {p.get('architecture', '?')}" for p in pools}) or ["none loaded"]
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return ", ".join(names) + (f" (OPENBLAS_CORETYPE={forced})" if forced is not None else "")


def _heap() -> str:
    from effv2_reference.kernels.runtime.heap import heap_retained
    return "retained" if heap_retained() else "os"


def run(spec: str, batch: int, sizes, steps: int, threads: int, block: int = 3):
    import torch

    from effv2_reference.model import ReferenceModel
    from torch_walker import build_torch_model

    rows = []
    for size in sizes:
        model = ReferenceModel(spec, dtype="float32", seed=0)
        tmodel, how = build_torch_model(model.resolved, model.state_dict(), torch.float32)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, model.resolved.input_channels, size, size)).astype(np.float32)
        labels = rng.integers(0, model.resolved.num_classes, batch)
        t = interleaved({"oracle": oracle_step_fn(model, x, labels), "torch": torch_step_fn(tmodel, x, labels)}, steps,
                        block=block)
        rows.append(_row(f"{spec} train step batch {batch} {size}x{size} float32", threads, t, how))
    return rows


def print_rows(rows):
    for r in rows:
        print(f"{r['config']}, {r['threads']} thread(s): oracle {r['oracle_ms']:.1f} ms "
              f"[{r['oracle_spread_ms'][0]:.1f}-{r['oracle_spread_ms'][1]:.1f}] cpu {r['oracle_cpu_ms']:.1f}, "
              f"torch {r['torch_ms']:.1f} ms [{r['torch_spread_ms'][0]:.1f}-{r['torch_spread_ms'][1]:.1f}] "
              f"cpu {r['torch_cpu_ms']:.1f} ({r['torch_model']}), ratio {r['ratio']:.2f} "
              f"(cpu {r['cpu_ratio']:.2f}), heap {r['heap']}, BLAS {r['blas']}, load {r['load1']}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="efficientnetv2-nano")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="threads for both sides (torch, BLAS, OpenMP, Numba)")
    ap.add_argument("--block", type=int, default=3,
                    help="steps of one side in a row, the first untimed (1: strict alternation)")
    ap.add_argument("--no-retain-heap", dest="retain_heap", action="store_false",
                    help="let glibc return freed memory to the OS (page faults every step, on both sides)")
    ap.add_argument("--json", action="store_true", help="print a JSON list of rows")
    args = ap.parse_args(argv)
    limits = set_threads(args.threads, args.retain_heap)  # noqa: F841 (kept alive for the whole run)
    rows = run(args.spec, args.batch, args.sizes, args.steps, args.threads, args.block)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_rows(rows)


if __name__ == "__main__":
    main()
