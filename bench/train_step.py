"""Benchmark: one training step (forward, backward, SGD momentum step; float32, train mode),
oracle (NumPy/Numba) vs PyTorch CPU on the same spec and weights, in the same process.

    python bench/train_step.py [--spec efficientnetv2-nano] [--batch 32] [--sizes 32 64] [--steps 20] [--json]

Prints the median step time of each and ratio = oracle_ms / torch_ms (< 1: oracle faster).
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


def _median_ms(step, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


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


def run(spec: str, batch: int, sizes, steps: int):
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
        oracle_ms = _median_ms(oracle_step_fn(model, x, labels), steps)
        torch_ms = _median_ms(torch_step_fn(tmodel, x, labels), steps)
        rows.append({"config": f"{spec} train step batch {batch} {size}x{size} float32", "oracle_ms": round(oracle_ms, 2),
                     "torch_ms": round(torch_ms, 2), "ratio": round(oracle_ms / torch_ms, 3),
                     "torch_model": how, "torch_threads": torch.get_num_threads()})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="efficientnetv2-nano")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print a JSON list of {config, oracle_ms, torch_ms, ratio}")
    args = ap.parse_args(argv)
    rows = run(args.spec, args.batch, args.sizes, args.steps)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['config']}: oracle {r['oracle_ms']:.1f} ms, torch {r['torch_ms']:.1f} ms "
              f"({r['torch_threads']} threads, {r['torch_model']}), ratio {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
