"""Read run records (`metrics.jsonl`, record.py) as untrusted input and draw their curves.

`load_run` checks a record line by line and returns its series (the `--json` of `effv2 plot`);
`draw` makes the figure: loss and held-out accuracy against step and against wall time, stage
boundaries marked and image sizes labelled, one colour per run. matplotlib is imported by `draw`
alone (the `plot` extra), with the Agg backend.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from .record import FILENAME, KEYS

FORMAT = "effv2-plot/1"
#: the columns of the series, by line type: every field of the record that is one number per line
STEP_COLUMNS = ("step", "wall_seconds", "stage", "image_size", "learning_rate", "loss", "train_accuracy",
                "images_per_second", "data_wait_share")
STAGE_COLUMNS = ("step", "wall_seconds", "stage", "image_size", "eval_size", "train_loss", "train_accuracy",
                 "heldout_loss", "heldout_top1", "heldout_top5", "ema_heldout_loss", "ema_heldout_top1",
                 "ema_heldout_top5")
EVAL_COLUMNS = ("step", "wall_seconds", "stage", "image_size", "eval_size", "heldout_loss", "heldout_top1",
                "heldout_top5", "final_size_loss", "final_size_top1", "final_size_top5")
#: fields that may be null (no EMA; a loss that was not finite)
NULLABLE = frozenset({"loss", "train_loss", "heldout_loss", "ema_heldout_loss", "ema_heldout_top1",
                      "ema_heldout_top5", "final_size_loss"})
HEADER = ("spec", "schedule", "training", "data", "framework", "processes", "seed", "total_steps")


class RecordError(ValueError):
    """A record that cannot be plotted; the message is one line naming the file and the problem."""


def record_path(run: str | Path) -> Path:
    """A run folder's metrics.jsonl, or the file itself."""
    path = Path(run)
    return path / FILENAME if path.is_dir() else path


def run_name(run: str | Path) -> str:
    path = Path(run)
    folder = path if path.is_dir() else path.parent
    return folder.resolve().name or str(folder)


def load_run(run: str | Path, name: str | None = None) -> dict:
    """The series of one run: header fields, `steps` and `stages` columns, stage regions."""
    path = record_path(run)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecordError(f"{run}: no such run folder or {FILENAME}") from None
    except OSError as exc:
        raise RecordError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not a run record (not UTF-8 text)") from None
    lines = _parse_lines(path, text)
    steps = [ln for ln in lines if ln["type"] == "step"]
    if not steps:
        raise RecordError(f"{path}: no step lines yet (the run has not logged a step)")
    stages = [ln for ln in lines if ln["type"] == "stage"]
    evals = [ln for ln in lines if ln["type"] == "eval"]
    header = lines[0]
    out = {"name": name or run_name(run), "record": str(path), **{k: header[k] for k in HEADER},
           "steps": {c: [ln[c] for ln in steps] for c in STEP_COLUMNS},
           "stages": {c: [ln[c] for ln in stages] for c in STAGE_COLUMNS},
           "evals": {c: [ln[c] for ln in evals] for c in EVAL_COLUMNS}}
    out["stages"]["accuracy"] = [ln["heldout_top1"] if ln["ema_heldout_top1"] is None else ln["ema_heldout_top1"]
                                 for ln in stages]
    out["regions"] = _regions(path, header, steps, stages)
    return out


def _parse_lines(path: Path, text: str) -> list[dict]:
    lines: list[dict] = []
    last_step = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            obj = json.loads(line, parse_constant=_no_constant)
        except ValueError:
            raise RecordError(f"{where} is not JSON (garbled or truncated record)") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise RecordError(f"{where} is not a record line (a JSON object with a 'type')")
        if not lines and obj["type"] != "run":
            raise RecordError(f"{where}: the first line must be the 'run' header, not '{obj['type']}'")
        if obj["type"] not in KEYS:
            continue  # a line type of a later version: not needed for the curves
        _check_fields(where, obj)
        if obj["type"] == "step":
            if last_step is not None and obj["step"] <= last_step:
                raise RecordError(f"{where}: step {obj['step']} does not follow step {last_step}")
            last_step = obj["step"]
        lines.append(obj)
    if not lines:
        raise RecordError(f"{path}: empty; not a run record")
    return lines


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _check_fields(where: str, obj: dict) -> None:
    kind = obj["type"]
    missing = [k for k in KEYS[kind] if k not in obj]
    if missing:
        raise RecordError(f"{where}: a '{kind}' line without {', '.join(missing[:3])}")
    columns = {"step": STEP_COLUMNS, "stage": STAGE_COLUMNS, "eval": EVAL_COLUMNS}.get(kind, ("step",))
    for key in columns:
        value = obj[key]
        if value is None and key in NULLABLE:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RecordError(f"{where}: '{key}' must be a number, got {json.dumps(value)[:40]}")
        if key in ("step", "stage", "image_size", "eval_size") and (value != int(value) or value < 0):
            raise RecordError(f"{where}: '{key}' must be a whole number >= 0, got {value}")
    if kind == "run":
        for key in HEADER:
            if not isinstance(obj[key], (str, int)) or isinstance(obj[key], bool):
                raise RecordError(f"{where}: header field '{key}' must be a string or a number")
        if not isinstance(obj["stages"], list):
            raise RecordError(f"{where}: header field 'stages' must be a list")


def _regions(path: Path, header: dict, steps: list[dict], stages: list[dict]) -> list[dict]:
    """The stages the record reached: step range, image size, and wall time at their ends (after the
    stage's evaluation when the record has it)."""
    wall_at = {ln["step"]: ln["wall_seconds"] for ln in steps}
    wall_at.update({ln["step"]: ln["wall_seconds"] for ln in stages})
    last = steps[-1]["step"]
    out = []
    for st in header["stages"]:
        if not isinstance(st, dict) or not all(isinstance(st.get(k), int) for k in ("start_step", "end_step",
                                                                                     "image_size")):
            raise RecordError(f"{path}: line 1: each of 'stages' must give start_step, end_step and image_size")
        if st["start_step"] >= last:
            break
        out.append({"stage": st.get("stage"), "image_size": st["image_size"], "start_step": st["start_step"],
                    "end_step": min(st["end_step"], last), "end_wall_seconds": wall_at.get(min(st["end_step"], last))})
    return out


def draw(runs: list[dict], size: tuple[int, int], title: str | None = None) -> bytes:
    """PNG bytes of the curves of `runs` (load_run output), `size` = (width, height) in pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    dpi = 100
    fig, axes = plt.subplots(2, 2, figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    try:
        for i, run in enumerate(runs):
            color = colors[i % len(colors)]
            for col, x_key in enumerate(("step", "wall_seconds")):
                _draw_run(axes[0, col], axes[1, col], run, x_key, color, i)
        for col, label in enumerate(("step", "wall time (s)")):
            axes[1, col].set_xlabel(label)
            for row, name in enumerate(("loss (train line, held-out dots)", "accuracy (held-out dots, train line)")):
                axes[row, col].set_ylabel(name)
                axes[row, col].grid(alpha=0.3)
            axes[0, col].set_yscale("log")  # an early held-out loss can be 10x the training loss
            y = axes[0, col].yaxis  # ticks 0.5, 1, 2, 5: not 5 x 10^-1
            y.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            y.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            y.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[1, 0].legend(loc="lower right", fontsize="small")
        fig.suptitle(title or ", ".join(r["name"] for r in runs))
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()
    finally:
        plt.close(fig)


def _draw_run(loss_ax, acc_ax, run: dict, x_key: str, color: str, index: int) -> None:
    # null (no EMA, a loss that was not finite) -> NaN, a gap in the line
    steps, stages = ({k: [float("nan") if v is None else v for v in vs] for k, vs in run[part].items()}
                     for part in ("steps", "stages"))
    loss_ax.plot(steps[x_key], steps["loss"], color=color, linewidth=1.2)
    ema = any(v is not None for v in run["stages"]["ema_heldout_top1"])  # the held-out figures the run reports
    loss_ax.plot(stages[x_key], stages["ema_heldout_loss" if ema else "heldout_loss"], "o--", color=color,
                 markersize=5)
    acc_ax.plot(steps[x_key], steps["train_accuracy"], color=color, linewidth=0.8, alpha=0.5)
    acc_ax.plot(stages[x_key], stages["accuracy"], "o-", color=color, markersize=6, linewidth=1.5,
                label=run["name"] if x_key == "step" else None)
    evals = {k: [float("nan") if v is None else v for v in vs] for k, vs in run.get("evals", {}).items()}
    if evals.get("step"):  # --eval-every: held-out inside stages, at the stage's size (.) and the final size (x)
        acc_ax.plot(evals[x_key], evals["heldout_top1"], ".", color=color, markersize=4, alpha=0.8)
        acc_ax.plot(evals[x_key], evals["final_size_top1"], "x", color=color, markersize=4, alpha=0.6)
    for ax in (loss_ax, acc_ax):
        start = 0.0
        for region in run["regions"]:
            end = region["end_step"] if x_key == "step" else region["end_wall_seconds"]
            if end is None:
                break
            if region is not run["regions"][-1]:
                ax.axvline(end, color=color, linestyle=":", alpha=0.6)
            if ax is loss_ax:
                ax.text((start + end) / 2, 0.97 - 0.06 * index, f"{region['image_size']} px", color=color,
                        ha="center", va="top", fontsize="small", transform=ax.get_xaxis_transform())
            start = end
