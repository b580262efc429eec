"""Summary of a progressive-learning ablation: mean and spread per variant, time to a target accuracy.

Used by `bench/progressive.py`; kept apart so the statistics can be read (and re-run on a saved
`ablation.json`, or several together: `python bench/progressive_report.py A/ablation.json [B/ablation.json]
[--target 0.7]`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def stage_points(run: dict) -> list[tuple[int, float, float]]:
    """(step, seconds, held-out accuracy) at every record point of one run: from its metrics.jsonl
    (`points`: stage ends and `--eval-every` evaluations, wall seconds since the start) when it has
    one, else at its stage ends with the stages' summed training seconds."""
    if run.get("points"):
        return [tuple(p) for p in run["points"]]
    points, elapsed = [], 0.0
    for stage in run["stages"]:
        elapsed += stage["seconds"]
        points.append((stage["end_step"], elapsed, stage["heldout_accuracy"]))
    return points


def time_to_target(run: dict, target: float) -> tuple[int, float] | None:
    """(step, seconds) of the first stage end whose held-out accuracy reaches `target`, or None."""
    for step, seconds, accuracy in stage_points(run):
        if accuracy >= target:
            return step, seconds
    return None


def default_target(runs: list[dict], reference: str = "fixed", fraction: float = 0.95) -> float | None:
    """`fraction` of the reference variant's mean final held-out accuracy (None without that variant)."""
    finals = [r["final_accuracy"] for r in runs if r["variant"] == reference]
    return fraction * statistics.fmean(finals) if finals else None


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(runs: list[dict], target: float | None) -> list[dict]:
    """One row per variant, in the order the variants first appear."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        group = [r for r in runs if r["variant"] == variant]
        reached = [t for t in (time_to_target(r, target) for r in group) if t] if target is not None else []
        per_stage = list(zip(*[[s["heldout_accuracy"] for s in r["stages"]] for r in group]))
        rows.append({
            "variant": variant, "seeds": [r["seed"] for r in group], "steps": group[0]["steps"],
            "sizes": group[0]["sizes"], "final_accuracy": _spread([r["final_accuracy"] for r in group]),
            "stage_accuracy_mean": [statistics.fmean(s) for s in per_stage],
            "train_seconds": _spread([r["train_seconds"] for r in group]),
            "cpu_seconds": _spread(cpu) if (cpu := [r["cpu_seconds"] for r in group if r.get("cpu_seconds")]) else None,
            "target": target, "reached": len(reached), "of": len(group),
            "final_at_target": sum(r["final_accuracy"] >= target for r in group) if target is not None else None,
            "time_to_target_s": statistics.fmean(t[1] for t in reached) if reached else None,
            "steps_to_target": statistics.fmean(t[0] for t in reached) if reached else None,
            "load_1min": [r["load_1min"] for r in group],
        })
    return rows


def markdown(rows: list[dict]) -> str:
    """The summary as a markdown table (accuracies in %, times in s)."""
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["| variant | sizes | steps | seeds | held-out final, mean ± std (min-max) | per stage end (mean) "
             "| training time | process CPU time | time to target (steps) | load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, t, c = r["final_accuracy"], r["train_seconds"], r["cpu_seconds"]
        cpu = "-" if c is None else f"{c['mean']:.0f} s ({c['min']:.0f}-{c['max']:.0f})"
        ttt = ("not reached" if r["time_to_target_s"] is None else
               f"{r['time_to_target_s']:.0f} s ({r['steps_to_target']:.0f}), {r['reached']}/{r['of']} runs")
        if r["final_at_target"] is not None and r["final_at_target"] < r["reached"]:
            ttt += f"; {r['final_at_target']}/{r['of']} still at the end"
        lines.append(f"| {r['variant']} | {' > '.join(map(str, r['sizes']))} | {r['steps']} | {len(r['seeds'])} "
                     f"| {pct(f['mean'])} ± {pct(f['std'])} ({pct(f['min'])}-{pct(f['max'])}) "
                     f"| {' / '.join(pct(a) for a in r['stage_accuracy_mean'])} "
                     f"| {t['mean']:.0f} s ({t['min']:.0f}-{t['max']:.0f}) | {cpu} | {ttt} "
                     f"| {min(r['load_1min']):.1f}-{max(r['load_1min']):.1f} |")
    target = rows[0]["target"] if rows else None
    if target is not None:
        lines.append(f"\nTarget: held-out accuracy >= {100 * target:.1f} % (at the size the run evaluates at that "
                     "point: the stage's), checked at each stage end and `--eval-every` evaluation; time = wall "
                     "seconds since the start from metrics.jsonl, or without one the stages' summed training "
                     "time. Process CPU time: "
                     "user + system seconds of the whole `effv2 train` process (start-up included).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+", help="ablation.json files written by bench/progressive.py")
    ap.add_argument("--target", type=float, default=None, help="held-out accuracy (0..1) [default: 95%% of fixed]")
    a = ap.parse_args()
    runs = [run for path in a.results for run in json.loads(path.read_text())["runs"]]
    print(markdown(summarize(runs, a.target if a.target is not None else default_target(runs))))


if __name__ == "__main__":
    main()
