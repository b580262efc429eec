"""Benchmark: the memory-bound passes behind most convolutions, in nanoseconds per value.

    python bench/bn_silu_passes.py [--channels 16] [--values 8192] [--repeats 300] [--json]

One float32 activation of `--channels` rows of `--values` values (16 x 8192: the nano's first stage at
32 px, batch 32), single thread, median over `--repeats` calls, NumPy's equivalent measured in the same
process:
  * SiLU forward (`kernels.silu.silu_exp_forward`) against `silu_exp_forward_naive` (NumPy's exp);
  * BN statistics (`kernels.elementwise.bn_moments_kernel`: float64 sums over 8 interleaved partials)
    against `bn_moments_naive`;
  * train-mode BN + SiLU, forward and backward (`ops.batch_norm_silu_train_forward` / `_backward`, one
    statistics group), against the same two ops unfused in NumPy (`(x - mean) / sqrt(var + eps)`, ...).
Only entry points that older revisions have too, so the script measures any checkout (run it from each
worktree's venv for a before / after).
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


def _median_ns_per_value(fn, values: int, repeats: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1e9 / values, 3)


def _numpy_bn_silu(x, gamma, beta, eps):
    mean = x.mean(axis=1, keepdims=True)
    xhat = (x - mean) / np.sqrt(x.var(axis=1, keepdims=True) + eps)
    y = xhat * gamma[:, None] + beta[:, None]
    s = 1.0 / (1.0 + np.exp(-y))
    return y * s, (xhat, s, y)


def _numpy_bn_silu_backward(dy, cache, gamma, inv_std):
    xhat, s, y = cache
    g = dy * s * (1.0 + y * (1.0 - s))
    dbeta, dgamma = g.sum(axis=1), (g * xhat).sum(axis=1)
    n = g.shape[1]
    return (gamma * inv_std)[:, None] * (g - dbeta[:, None] / n - xhat * dgamma[:, None] / n)


def rows(channels: int, values: int, repeats: int) -> list[dict]:
    from threadpoolctl import threadpool_limits

    from effv2_reference.kernels.network.elementwise import bn_moments_kernel, bn_moments_naive
    from effv2_reference.kernels.network.silu import silu_exp_forward, silu_exp_forward_naive
    from effv2_reference.ops.bn_silu import batch_norm_silu_backward, batch_norm_silu_train_forward

    threadpool_limits(1)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((channels, values)) * 2 + 0.5).astype(np.float32)
    dy = rng.standard_normal((channels, values)).astype(np.float32)
    gamma, beta = (rng.random(channels) + 0.5).astype(np.float32), rng.standard_normal(channels).astype(np.float32)
    n = x.size
    flat, s, y = x.reshape(-1), np.empty(n, np.float32), np.empty(n, np.float32)
    mean, var = np.empty(channels, np.float32), np.empty(channels, np.float32)
    x4 = x.reshape(channels, 1, 1, values)  # CNHW with N = H = 1: one statistics group per channel
    _, cache, _, _ = batch_norm_silu_train_forward(x4, gamma, beta, eps=1e-3)
    _, np_cache = _numpy_bn_silu(x, gamma, beta, 1e-3)
    inv_std = 1.0 / np.sqrt(x.var(axis=1) + 1e-3)
    out = []
    for what, fast, plain in (
            ("SiLU forward", lambda: silu_exp_forward(flat, s, y), lambda: silu_exp_forward_naive(flat)),
            ("BN statistics (mean, biased variance)", lambda: bn_moments_kernel(x, mean, var),
             lambda: bn_moments_naive(x)),
            ("BN + SiLU, train forward", lambda: batch_norm_silu_train_forward(x4, gamma, beta, eps=1e-3),
             lambda: _numpy_bn_silu(x, gamma, beta, 1e-3)),
            ("BN + SiLU, backward", lambda: batch_norm_silu_backward(dy.reshape(x4.shape), cache),
             lambda: _numpy_bn_silu_backward(dy, np_cache, gamma, inv_std))):
        out.append({"what": what, "shape": [channels, values],
                    "ns_per_value": _median_ns_per_value(fast, n, repeats),
                    "numpy_ns_per_value": _median_ns_per_value(plain, n, repeats)})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=at_least(1), default=16)
    ap.add_argument("--values", type=at_least(1), default=8192)
    ap.add_argument("--repeats", type=at_least(1), default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    table = rows(args.channels, args.values, args.repeats)
    if args.json:
        print(json.dumps(table))
        return
    for r in table:
        print(f"{r['what']:40s} {r['ns_per_value']:7.3f} ns/value   NumPy {r['numpy_ns_per_value']:7.3f} "
              f"(x{r['numpy_ns_per_value'] / r['ns_per_value']:.1f})")


if __name__ == "__main__":
    main()
