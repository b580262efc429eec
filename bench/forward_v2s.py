"""Benchmark: eval-mode forward of efficientnetv2-s at 224x224, batch 8, float32, oracle vs PyTorch CPU.

    python bench/forward_v2s.py [--size 224] [--batch 8] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import _median_ms  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="efficientnetv2-s")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from effv2_reference.model import ReferenceModel
    from torch_walker import build_torch_model

    model = ReferenceModel(args.spec, dtype="float32", seed=0)
    tmodel, how = build_torch_model(model.resolved, model.state_dict(), torch.float32)
    tmodel.eval()
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    xt = torch.from_numpy(x)
    oracle_ms = _median_ms(lambda: model.forward(x), args.repeats, warmup=1)
    with torch.no_grad():
        torch_ms = _median_ms(lambda: tmodel(xt), args.repeats, warmup=1)
        ref = tmodel(xt).numpy()
        err = float(np.abs(ref - model.forward(x)).max() / np.abs(ref).max())
    row = {"config": f"{args.spec} eval forward batch {args.batch} {args.size}x{args.size} float32",
           "oracle_ms": round(oracle_ms, 1), "torch_ms": round(torch_ms, 1), "ratio": round(oracle_ms / torch_ms, 3),
           "logit_rel_err": err, "torch_model": how, "torch_threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps([row], indent=2))
    else:
        print(f"{row['config']}: oracle {oracle_ms:.0f} ms, torch {torch_ms:.0f} ms, ratio {row['ratio']:.2f} "
              f"(logit rel err {err:.1e})")


if __name__ == "__main__":
    main()
