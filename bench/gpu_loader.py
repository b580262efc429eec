"""Does the real loader keep a GPU busy? V2-S training images/s fed by effv2's loader from JPEG files,
against the same trainer fed one synthetic batch already on the device (bench/gpu.sh calls it on CUDA).

    python bench/gpu_loader.py [--device cuda] [--spec efficientnetv2-s] [--size 224] [--batch 64]
                               [--steps 30] [--workers 8] [--images 512] [--json]

The files: `--images` 500 x 375 JPEGs cut from scikit-learn's sample photos (bench/data_pipeline.py) in an
ImageNet-layout folder of 10 classes. The pipeline is the official one at the stage: random-resized crop of
the original (JPEG DCT reduction when the box allows), flip, automl RandAugment M15 x 2, normalisation,
mixup 0.2 per group of 8; `--workers` loader processes prefetch steps ahead. Both runs use
`TorchBackend.train_step` (bfloat16 autocast, channels-last). The issue's goal: loader / synthetic >= 0.9.
A CPU dry run: `--device cpu --spec efficientnetv2-nano --size 64 --batch 8 --steps 3 --workers 1 --images 32`
(figures then mean nothing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


from data_pipeline import make_jpegs


def make_folder(root: Path, images: int) -> Path:
    (root / "flat").mkdir()
    files = [Path(p) for p in make_jpegs(root / "flat", images)]
    for i, f in enumerate(files):
        cls = root / "train" / f"c{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        f.rename(cls / f.name)
    shutil.rmtree(root / "flat")
    return root


def documents(spec_name: str, size: int, batch: int, steps: int):
    from effv2_spec.documents import parse_obj
    from effv2_spec.presets import load

    spec = load(spec_name)
    sched = parse_obj({"kind": "progressive_schedule", "name": "g", "convention": "paper", "total_steps": steps + 3,
                       "num_stages": 1, "image_size": {"start": size, "end": size},
                       "regularizers": {"randaugment_magnitude": {"start": 15, "end": 15},
                                        "mixup_alpha": {"start": 0.2, "end": 0.2}}})
    config = parse_obj({"kind": "training", "name": "g", "batch_size": batch, "ema": None, "randaugment_layers": 2,
                        "optimizer": {"type": "sgd", "momentum": 0.9},
                        "augmentation": {"randaugment": "automl", "random_resized_crop": {}, "mix_group_size": 8}})
    return spec, sched, config


def measure(a, folder: Path) -> dict:
    import torch

    from effv2_adapters.torch.train import Processes, TorchBackend
    from effv2_train.data import open_source
    from effv2_train.data.loader import BatchLoader
    from effv2_train.data.pipeline import StepData
    from effv2_train.init import initial_tensors
    from effv2_train.plan import TrainingPlan

    spec, sched, config = documents(a.spec, a.size, a.batch, a.steps)
    source = open_source(str(folder / "train"), num_classes=spec.num_classes, channels=3)
    plan = TrainingPlan(spec, sched, config, len(source), seed=0)
    data = StepData(plan, source)
    resolved = plan.stage_resolved(plan.stage_at(0))
    backend = TorchBackend(plan, initial_tensors(plan.base, 0, "float32"),
                           procs=Processes(device=torch.device(a.device)), precision="bfloat16", channels_last=True,
                           compile=False)
    backend.set_stage(resolved)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    x, targets = data.batch(0, slice(0, a.batch), resolved)
    masks = plan.masks(0, slice(0, a.batch), resolved)

    def synthetic(step):
        backend.train_step(x, targets, masks, lr=0.01, step=step)

    with BatchLoader(data, a.workers, slice(0, a.batch)) as loader:
        def real(step):
            xs, ts = data.assemble(step, slice(0, a.batch), loader.rows(step), resolved)
            backend.train_step(xs, ts, plan.masks(step, slice(0, a.batch), resolved), lr=0.01, step=step)

        out = {}
        for name, step_fn in (("synthetic", synthetic), ("loader", real), ("synthetic_again", synthetic)):
            for s in range(3):  # warm-up: cudnn autotuning, the workers' first steps
                step_fn(s)
            sync()
            t = time.perf_counter()
            for s in range(3, 3 + a.steps):
                step_fn(s)
            sync()
            out[name] = a.batch * a.steps / (time.perf_counter() - t)
    out["ratio"] = out["loader"] / max(out["synthetic"], out["synthetic_again"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--spec", default="efficientnetv2-s")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = dict(vars(a), **measure(a, make_folder(Path(tmp), a.images)))
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{a.spec} at {a.size} px, batch {a.batch}, {a.workers} loader processes, {a.device}: "
              f"synthetic {result['synthetic']:.0f} img/s, loader {result['loader']:.0f} img/s, "
              f"ratio {result['ratio']:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
