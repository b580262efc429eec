"""Benchmark: Numba compile time with a cold cache vs a warm one, and peak memory.

Each measurement runs in a fresh interpreter with NUMBA_CACHE_DIR pointing at a temporary
directory: the first run compiles every kernel signature and writes the cache (cold), the
second loads it (warm). Reported: time to import the kernels (explicit signatures compile
eagerly at import), time of the first nano training step, and the child's peak RSS
(resource.getrusage ru_maxrss).

    python bench/compile_time.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, time
t0 = time.perf_counter()
from effv2_reference.kernels.network import depthwise, elementwise, im2col
import effv2_reference.ops
t1 = time.perf_counter()
import numpy as np
from effv2_reference.model import ReferenceModel
from effv2_reference.ops import softmax_cross_entropy
m = ReferenceModel("efficientnetv2-nano", dtype="float32")
x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
t2 = time.perf_counter()
logits = m.forward(x, training=True)
m.backward(softmax_cross_entropy(logits, np.arange(32) % 10)[1])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_step_s": t3 - t2,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PEAK = r"""
import json, resource, sys, time
import numpy as np
from effv2_reference.model import ReferenceModel
name, size, batch, train = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "train"
m = ReferenceModel(name, dtype="float32")
x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
t = time.perf_counter()
out = m.forward(x, training=train)
if train:
    m.backward(np.ones_like(out) / out.size)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(code: str, env: dict, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold", "warm"):
            r = _child(CHILD, env)
            rows.append({"config": f"numba cache {label}: import kernels + first nano train step (batch 32, 32x32)",
                         **{k: round(v, 3) for k, v in r.items()}})
        for name, size, batch, mode in [("efficientnetv2-nano", 32, 32, "train"), ("efficientnetv2-s", 224, 8, "eval"),
                                        ("efficientnetv2-xl", 64, 1, "eval"), ("efficientnetv2-xl", 64, 2, "train")]:
            r = _child(PEAK, env, name, str(size), str(batch), mode)
            rows.append({"config": f"peak memory: {name} {mode} batch {batch} {size}x{size} float32 (incl. init)",
                         **{k: round(v, 2) for k, v in r.items()}})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(r["config"] + ": " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "config"))


if __name__ == "__main__":
    main()
