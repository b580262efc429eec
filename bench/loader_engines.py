"""effv2's BatchLoader against torch.utils.data.DataLoader feeding the same steps: images/s and the first
step's latency, on JPEG files, the same StepData (so the same bits), the same number of worker processes.

    OMP_NUM_THREADS=1 python bench/loader_engines.py [--workers 2] [--size 224] [--batch 32] [--steps 12]
                                                     [--images 96] [--runs 3] [--json]

BatchLoader cuts each step's rows across the workers and keeps `prefetch` steps in flight (fresh
interpreters on pipes, dying with the trainer); DataLoader (map-style over step numbers, batch_size=None,
`prefetch_factor` 2, persistent workers, fork) gives each worker whole steps; its workers load Numba and keep
freed memory in the heap first, as effv2's do, so the two differ only as engines. The pipeline is the official
one: crop of the original, flip, automl RandAugment M15 x 2, mixup 0.2; normalisation and mixing
(`assemble`) run in the consumer for both. Why a trainer uses one engine or the other is in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from data_pipeline import make_jpegs
from gpu_loader import documents


class _Steps:
    """DataLoader's map-style dataset: item k is step k's prepared rows (uint8 NHWC)."""

    def __init__(self, data, batch: int):
        self.data, self.batch = data, batch

    def __len__(self) -> int:
        return self.data.plan.total_steps

    def __getitem__(self, step: int):
        return self.data.prepare_rows(step, slice(0, self.batch))


def _as_effv2_worker(_worker_id: int) -> None:
    """What effv2's own workers do first (loader._init_worker): Numba loaded, so the pipeline takes its kernels
    (the same bits), and freed memory kept in the heap: the engines then differ only as engines."""
    import numba  # noqa: F401

    from effv2_reference.kernels.runtime.heap import retain_freed_memory

    retain_freed_memory()


def _consume(data, rows_of, steps: int, batch: int) -> tuple[float, float]:
    """(seconds to the first assembled step, images/s over the rest)."""
    resolved = data.plan.stage_resolved(data.plan.stage_at(0))
    t0 = time.perf_counter()
    data.assemble(0, slice(0, batch), rows_of(0), resolved)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    for step in range(1, steps):
        data.assemble(step, slice(0, batch), rows_of(step), resolved)
    return first, batch * (steps - 1) / (time.perf_counter() - t1)


def effv2_loader(data, a) -> tuple[float, float]:
    from effv2_train.data.loader import BatchLoader

    with BatchLoader(data, a.workers, slice(0, a.batch), prefetch=2) as loader:
        return _consume(data, loader.rows, a.steps, a.batch)


def torch_loader(data, a) -> tuple[float, float]:
    import numpy as np
    from torch.utils.data import DataLoader

    loader = DataLoader(_Steps(data, a.batch), batch_size=None, num_workers=a.workers, prefetch_factor=2,
                        persistent_workers=True, shuffle=False, worker_init_fn=_as_effv2_worker)
    batches = iter(loader)  # its workers end when the iterator is collected
    return _consume(data, lambda step: np.asarray(next(batches)), a.steps, a.batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from effv2_train.data import open_source
    from effv2_train.data.pipeline import StepData
    from effv2_train.plan import TrainingPlan

    results = {"effv2": [], "torch": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train" / "c0"
        root.mkdir(parents=True)
        make_jpegs(root, a.images)
        spec, sched, config = documents("efficientnetv2-s", a.size, a.batch, a.steps)
        source = open_source(str(Path(tmp) / "train"), num_classes=spec.num_classes, channels=3)
        data = StepData(TrainingPlan(spec, sched, config, len(source), seed=0), source)
        for _ in range(a.runs):  # interleaved, so load on the machine falls on both
            results["effv2"].append(effv2_loader(data, a))
            results["torch"].append(torch_loader(data, a))
    summary = {name: {"first_step_s": statistics.median(r[0] for r in runs),
                      "images_per_s": statistics.median(r[1] for r in runs),
                      "images_per_s_range": [min(r[1] for r in runs), max(r[1] for r in runs)]}
               for name, runs in results.items()}
    doc = {"args": vars(a), "summary": summary, "runs": results}
    if a.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{a.workers} workers, {a.size} px, batch {a.batch}, {a.steps} steps, {a.runs} runs (median, range)")
    for name, s in summary.items():
        lo, hi = s["images_per_s_range"]
        print(f"  {name:<6} {s['images_per_s']:7.1f} img/s ({lo:.1f}-{hi:.1f})  first step {s['first_step_s']:.2f} s")


if __name__ == "__main__":
    main()
