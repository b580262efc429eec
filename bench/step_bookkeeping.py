"""Benchmark: a training step's bookkeeping outside the network, each fast path against its plain twin.

    python bench/step_bookkeeping.py [--rows 32] [--repeats 2000] [--json]

Median microseconds per call, in one process (the SGD rows interleaved, so that a VM slowdown hits
their sides alike; the keys' two sides one after the other):
  * keyed Philox keys of `--rows` rows (`keyed.philox_keys`, 3-4 calls a step and process): the NumPy
    derivation against the Numba kernel it takes once Numba is loaded (kernels/data/seedseq.py);
  * the SGD step of efficientnetv2-nano's 56 tensors (`optim.SGDOptimizer.step`, one a step): tensor by
    tensor against one kernel call over the model's one parameter buffer, the gradients given as one buffer
    (as the processes' summed gradients are) and as a dict (one process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from unittest import mock

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_args import at_least  # noqa: E402


def _median_us(fns: dict, repeats: int) -> dict:
    for fn in fns.values():  # warm-up (compiled code loaded, caches filled)
        for _ in range(20):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: round(float(np.median(v)) * 1e6, 1) for k, v in times.items()}


def keyed_row(rows: int, repeats: int) -> dict:
    from effv2_train import keyed
    import effv2_reference.kernels.data.seedseq  # noqa: F401 - Numba loaded: philox_keys takes its kernel

    prefix, index = (0, 3, 417), list(range(1000, 1000 + rows))
    assert keyed._seedseq_kernel() is not None
    keys = keyed.philox_keys(prefix, index)
    fast = _median_us({"kernel": lambda: keyed.philox_keys(prefix, index)}, repeats)["kernel"]
    with mock.patch.object(keyed, "_seedseq_kernel", lambda: None):  # the NumPy derivation
        assert np.array_equal(keyed.philox_keys(prefix, index), keys)
        plain = _median_us({"numpy": lambda: keyed.philox_keys(prefix, index)}, repeats)["numpy"]
    return {"what": f"philox_keys, {rows} rows", "plain_us": plain, "fast_us": fast}


def sgd_rows(repeats: int) -> list[dict]:
    from effv2_reference.model import ReferenceModel
    from effv2_reference.optim import build_optimizer
    from effv2_spec.presets import load

    config = load("training-cpu")
    model = ReferenceModel("efficientnetv2-nano", dtype="float32")
    rng = np.random.default_rng(0)
    grads = {k: (rng.standard_normal(v.shape) * 1e-3).astype(v.dtype) for k, v in model.params.items()}
    flat = np.concatenate([g.reshape(-1) for g in grads.values()])
    apart = {k: v.copy() for k, v in model.params.items()}  # separate arrays: the tensor-by-tensor path
    one, other = build_optimizer(config, model.resolved), build_optimizer(config, model.resolved)
    t = _median_us({"apart": lambda: other.step(apart, grads, 1e-3),
                    "flat": lambda: one.step(model.params, grads, 1e-3, flat_grads=flat),
                    "dict": lambda: one.step(model.params, grads, 1e-3)}, repeats)
    assert one._flat[1] is not None and other._flat[1] is None  # which path each side took
    n = sum(v.size for v in apart.values())
    return [{"what": f"SGD step, {len(apart)} tensors ({n} values), summed gradients as one buffer",
             "plain_us": t["apart"], "fast_us": t["flat"]},
            {"what": "SGD step, gradients as a dict (one process)", "plain_us": t["apart"], "fast_us": t["dict"]}]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=at_least(1), default=32)
    ap.add_argument("--repeats", type=at_least(1), default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = [keyed_row(args.rows, args.repeats), *sgd_rows(args.repeats)]
    if args.json:
        print(json.dumps(rows))
        return
    for r in rows:
        print(f"{r['what']}: {r['plain_us']:.1f} -> {r['fast_us']:.1f} us (x{r['plain_us'] / r['fast_us']:.1f})")


if __name__ == "__main__":
    main()
