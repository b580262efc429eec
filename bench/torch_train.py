"""Benchmark: the PyTorch trainer's step against a plain hand-written torch loop, and the shared
data pipeline's throughput per worker (to size `--workers` for a GPU).

    python bench/torch_train.py [--spec efficientnetv2-nano] [--batch 32] [--size 64] [--threads 1]
                                [--steps 20] [--data-size 224] [--magnitude 15] [--json]

Step: `TorchBackend.train_step` (masks, soft targets with label smoothing, L2 by role, optimiser,
loss/accuracy all-reduce) vs the same model, batch and optimiser in a five-line loop
(forward, cross-entropy, backward, weight decay, step), interleaved in one process. EMA off on
both sides (the plain loop has none). Overhead = trainer / plain - 1.

Data: `StepData.prepare_rows` (random-resized crop from 256 px photos-sized noise images to
--data-size, flip, automl RandAugment at --magnitude, 2 layers) + `assemble` (normalise,
mixup 0.2 and cutmix 1.0 per group of 16) in this process, images per second; then through
`BatchLoader` with 1 and 2 worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def step_overhead(spec_name: str, batch: int, size: int, reps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from effv2_spec.documents import parse_obj
    from effv2_spec.presets import load
    from effv2_train.init import initial_tensors
    from effv2_train.plan import TrainingPlan
    from effv2_adapters.torch.train import TorchBackend
    from train_step import interleaved

    spec = load(spec_name)
    sched = parse_obj({"kind": "progressive_schedule", "name": "b", "convention": "paper", "total_steps": 10,
                       "num_stages": 1, "image_size": {"start": size, "end": size}})
    config = parse_obj({"kind": "training", "name": "b", "batch_size": batch, "ema": None, "label_smoothing": 0.1,
                        "optimizer": {"type": "sgd", "momentum": 0.9, "nesterov": True}})
    plan = TrainingPlan(spec, sched, config, batch, seed=0)
    tensors = initial_tensors(plan.base, 0, "float32")
    backend = TorchBackend(plan, tensors)
    resolved = plan.stage_resolved(plan.stage_at(0))
    backend.set_stage(resolved)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    labels = rng.integers(0, spec.num_classes, batch)
    targets = np.eye(spec.num_classes, dtype=np.float32)[labels]
    masks = plan.masks(0, slice(0, batch), resolved)

    from effv2_adapters.torch.build import build_model

    plain = build_model(plan.base, torch.float32, init=False)
    plain.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
    decayed = [p for n, p in plain.named_parameters() if plan.base.param(n).role in config.weight_decay.applies_to]
    others = [p for n, p in plain.named_parameters() if plan.base.param(n).role not in config.weight_decay.applies_to]
    opt = torch.optim.SGD([{"params": decayed, "weight_decay": config.weight_decay.rate},
                           {"params": others, "weight_decay": 0.0}], lr=0.01, momentum=0.9, nesterov=True)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    mt = {k: torch.from_numpy(v) for k, v in masks.items()}

    def plain_step():
        plain.train()
        loss = F.cross_entropy(plain(xt, mt), yt, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def trainer_step():
        backend.train_step(x, targets, masks, lr=0.01, step=0)

    times = interleaved({"trainer": trainer_step, "plain": plain_step}, reps)
    times["overhead"] = times["trainer"]["median_ms"] / times["plain"]["median_ms"] - 1.0
    return times


def data_throughput(size: int, magnitude: float, batch: int = 64, steps: int = 4) -> dict:
    from effv2_spec.documents import parse_obj
    from effv2_spec.presets import load
    from effv2_train.data.loader import BatchLoader
    from effv2_train.data.pipeline import StepData
    from effv2_train.data.sources import Dataset
    from effv2_train.plan import TrainingPlan

    spec = load("efficientnetv2-s")
    sched = parse_obj({"kind": "progressive_schedule", "name": "b", "convention": "paper", "total_steps": 64,
                       "num_stages": 1, "image_size": {"start": size, "end": size},
                       "regularizers": {"randaugment_magnitude": {"start": magnitude, "end": magnitude},
                                        "mixup_alpha": {"start": 0.2, "end": 0.2},
                                        "cutmix_alpha": {"start": 1.0, "end": 1.0}}})
    config = parse_obj({"kind": "training", "name": "b", "batch_size": batch, "augmentation": {"mix_group_size": 16}})
    n = batch * (steps + 2)
    images = np.random.default_rng(0).integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)
    labels = np.arange(n) % spec.num_classes
    plan = TrainingPlan(spec, sched, config, n, seed=0)
    data = StepData(plan, Dataset(images, labels, spec.num_classes, "random"))
    resolved = plan.stage_resolved(plan.stage_at(0))
    out = {}
    t = time.perf_counter()
    for s in range(steps):
        data.assemble(s, slice(0, batch), data.prepare_rows(s, slice(0, batch)), resolved)
    out["in_process_images_per_s"] = steps * batch / (time.perf_counter() - t)
    for workers in (1, 2):
        with BatchLoader(data, workers) as loader:
            loader.rows(0)  # start-up (spawned interpreters import numpy, pydantic, the plan)
            t = time.perf_counter()
            for s in range(1, steps + 1):
                data.assemble(s, slice(0, batch), loader.rows(s), resolved)
            out[f"workers_{workers}_images_per_s"] = steps * batch / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="efficientnetv2-nano")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--data-size", type=int, default=224)
    ap.add_argument("--magnitude", type=float, default=15.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = {"spec": args.spec, "batch": args.batch, "size": args.size, "threads": args.threads,
              "load_1min": os.getloadavg()[0],
              "step": step_overhead(args.spec, args.batch, args.size, args.steps),
              "data": data_throughput(args.data_size, args.magnitude)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    s, d = result["step"], result["data"]
    print(f"{args.spec} batch {args.batch} {args.size}x{args.size}, {args.threads} thread(s), "
          f"load {result['load_1min']:.1f}")
    print(f"  trainer step {s['trainer']['median_ms']:.1f} ms (min {s['trainer']['min_ms']:.1f}, max "
          f"{s['trainer']['max_ms']:.1f}); plain loop {s['plain']['median_ms']:.1f} ms "
          f"(min {s['plain']['min_ms']:.1f}, "
          f"max {s['plain']['max_ms']:.1f}); overhead {100 * s['overhead']:+.1f} %")
    print(f"  data at {args.data_size} px, RandAugment {args.magnitude:g}, mixup+cutmix: "
          f"{d['in_process_images_per_s']:.0f} images/s in process, {d['workers_1_images_per_s']:.0f} with 1 worker, "
          f"{d['workers_2_images_per_s']:.0f} with 2 workers")


if __name__ == "__main__":
    main()
