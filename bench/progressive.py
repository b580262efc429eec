"""The paper's claim at small scale: progressive learning vs fixed-size training, same step count.

    python bench/progressive.py [--spec efficientnetv2-nano] [--schedule progressive-efficientnetv2-nano-paper]
                                [--training training-cpu] [--data digits] [--steps N] [--framework torch]
                                [--seeds 0 1] [--json]

Runs `effv2 train` twice per seed with the same spec, recipe, data and number of steps: once with
the progressive schedule (image size and regularisers raised stage by stage), once with the same
schedule collapsed to one stage at its final values (the final image size, the final
regularisation: fixed-size training). Reports wall time and held-out accuracy at the spec's eval
size for both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str]) -> tuple[float, dict]:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "effv2_spec.cli", "train", *args, "--json"], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"effv2 train failed: {(done.stderr or done.stdout).strip().splitlines()[-1]}")
    return time.perf_counter() - t, json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="efficientnetv2-nano")
    ap.add_argument("--schedule", default="progressive-efficientnetv2-nano-paper")
    ap.add_argument("--training", default="training-cpu")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--framework", default="torch", choices=["torch", "reference"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from effv2_spec.documents import load_schedule

    sched = json.loads(load_schedule(a.schedule).model_dump_json())
    if a.steps:
        sched["total_steps"], sched["total_epochs"] = a.steps, None
    fixed = dict(sched, name=sched["name"] + "-fixed", num_stages=1,
                 image_size=dict(sched["image_size"], start=sched["image_size"]["end"]),
                 regularizers={k: {"start": r["end"], "end": r["end"]} for k, r in sched["regularizers"].items()})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, doc in (("progressive", sched), ("fixed", fixed)):
            (Path(tmp) / f"{name}.json").write_text(json.dumps(doc))
        for seed in a.seeds:
            for name in ("progressive", "fixed"):
                extra = ["--device", "cpu"] if a.framework == "torch" else []
                wall, out = run([a.spec, "--schedule", str(Path(tmp) / f"{name}.json"), "--training", a.training,
                                 "--data", a.data, "--seed", str(seed), "--framework", a.framework, *extra,
                                 "--out", str(Path(tmp) / f"{name}-{seed}"), "--checkpoint-every", "0"])
                rows.append({"run": name, "seed": seed, "wall_s": wall, "train_s": out["training_seconds"],
                             "heldout_accuracy": out["final_accuracy"], "steps": out["steps"],
                             "sizes": [s["image_size"] for s in out["stages"]]})
    result = {"spec": a.spec, "schedule": a.schedule, "training": a.training, "data": a.data,
              "framework": a.framework, "load_1min": os.getloadavg()[0], "runs": rows}
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{a.spec}, {a.schedule} vs one stage at its final values, {a.training}, {a.data}, {a.framework}")
    for r in rows:
        print(f"  {r['run']:<12} seed {r['seed']}  sizes {r['sizes']}  {r['steps']} steps  train {r['train_s']:.1f} s "
              f"(wall {r['wall_s']:.1f} s)  held-out {100 * r['heldout_accuracy']:.2f} %")


if __name__ == "__main__":
    main()
