"""A run's record: `metrics.jsonl` next to the checkpoint, one JSON object per line.

Line types (every line has `type`, `step` and `time`, the Unix time it was written):

- `run`: once, first: what runs (documents, seed, dtype, framework, data counts, stages);
- `resume`: where a `--resume` continued (the checkpoint's step);
- `step`: every `log_every` steps, at each stage's last step, at every checkpoint and where
  `--stop-at` stops: the steps since the previous `step` line (loss and accuracy are their means);
- `stage`: at each stage end: held-out loss, top-1, top-5 of the weights and of the EMA;
- `eval`: every `--eval-every` steps inside a stage (off by default): held-out loss, top-1 and top-5 at
  the stage's image size and at the run's final eval size, of the weights the run reports (the EMA when
  the recipe has one). They show what a stage switch does to the net (the dip right after it, at both
  sizes) and what each stage contributes at the size the run is judged at.

Every line is appended whole by one os.write on an O_APPEND descriptor, so a kill leaves whole
lines. A `step` line is written at every checkpoint before the checkpoint itself, and a resume
first drops the lines past the checkpoint's step, so the `step` lines of a resumed run cover
every step exactly once. Wall-clock figures are output only: nothing the run computes reads them.

NumPy only (no numba, no framework).
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from effv2_spec.weights import atomic_write_bytes

from . import tensorboard
from .checkpoint import FILENAME as CHECKPOINT

FILENAME = "metrics.jsonl"
PENDING = f".{FILENAME}.pending"
VERSION = 1

#: the keys of each line type, in the order they are written
KEYS = {
    "run": ("type", "version", "step", "time", "started", "spec", "schedule", "training", "data", "seed", "dtype",
            "framework", "processes", "train_images", "heldout_images", "batch_size", "steps_per_epoch",
            "total_steps", "eval_size", "ema", "log_every", "stages"),
    "resume": ("type", "step", "time", "framework", "processes", "wall_seconds"),
    "step": ("type", "step", "time", "steps", "stage", "image_size", "learning_rate", "loss", "train_accuracy",
             "images_per_second", "data_wait_share", "wall_seconds", "regularizers"),
    "stage": ("type", "step", "time", "stage", "image_size", "eval_size", "start_step", "end_step", "steps",
              "regularizers", "train_loss", "train_accuracy", "heldout_loss", "heldout_top1", "heldout_top5",
              "ema_heldout_loss", "ema_heldout_top1", "ema_heldout_top5", "learning_rate_end",
              "images_per_second", "stage_seconds", "wall_seconds"),
    "eval": ("type", "step", "time", "stage", "image_size", "eval_size", "weights", "heldout_loss", "heldout_top1",
             "heldout_top5", "final_size_loss", "final_size_top1", "final_size_top5", "wall_seconds"),
}
#: fields that are not curves (TensorBoard gets every other number of a `step` or `stage` line)
NOT_SCALARS = frozenset({"type", "step", "time", "steps", "start_step", "end_step"})


def run_header(loop) -> dict:
    """The `run` line of a `ProgressiveLoop` (read from its attributes)."""
    return {"spec": loop.spec.name, "schedule": loop.schedule.name, "training": loop.config.name,
            "data": loop.train_data.name, "seed": loop.seed, "dtype": loop.dtype,
            "framework": loop.backend.framework, "processes": loop.backend.world,
            "train_images": len(loop.train_data), "heldout_images": len(loop.heldout),
            "batch_size": loop.batch, "steps_per_epoch": loop.steps_per_epoch, "total_steps": loop.total_steps,
            "eval_size": loop.eval_size, "ema": loop.config.ema is not None,
            "stages": [{"stage": s.index, "image_size": s.image_size, "start_step": s.start_step,
                        "end_step": s.end_step, "regularizers": dict(s.regularizers)} for s in loop.stages]}


class RunRecord:
    """Writes `folder/metrics.jsonl` (and TensorBoard files when asked); with folder None it only counts
    (the processes other than rank 0, runs without an output folder)."""

    def __init__(self, folder: Path | None, *, log_every: int = 10, tensorboard_files: bool = False):
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.folder = folder
        self.path = folder / FILENAME if folder is not None else None
        self.log_every = int(log_every)
        self.tensorboard_files = tensorboard_files
        self.started = False
        self._pending = False
        self._target: Path | None = None  # the file lines go to (the pending one until a first checkpoint)
        self._fd: int | None = None
        self._events: tensorboard.EventWriter | None = None
        self._wall_before = 0.0  # wall seconds of the earlier processes of this run
        self._t0 = time.perf_counter()
        self._reset_interval()

    # -- opening --
    def start(self, header: dict, resumed_step: int | None, framework: str, processes: int) -> None:
        """Begin the file (a new run) or continue it after a resume at `resumed_step` (lines past it dropped)."""
        if self.started:  # run() again on the same loop: carry on where the last call stopped
            if self._target is not None and self._fd is None:
                self._fd = os.open(self._target, os.O_WRONLY | os.O_APPEND)
                if self._events is not None:
                    self._events.reopen()
            return
        self.started = True
        self._t0 = time.perf_counter()
        if self.path is None:
            return
        kept = [] if resumed_step is None else _kept_lines(self.path, resumed_step)
        for tmp in self.folder.glob(f".{FILENAME}.*"):  # a rewrite that was killed, a new run's that was
            tmp.unlink(missing_ok=True)
        # a new run in the folder of an earlier one (--overwrite) keeps the earlier record beside the
        # earlier checkpoint until its own first checkpoint replaces that (`checkpointed`)
        self._pending = resumed_step is None and (self.folder / CHECKPOINT).exists()
        self._target = self.folder / PENDING if self._pending else self.path
        atomic_write_bytes(self._target, b"".join(_encode(line) for line in kept))
        self._fd = os.open(self._target, os.O_WRONLY | os.O_APPEND)
        self._wall_before = next((line["wall_seconds"] for line in reversed(kept)
                                  if isinstance(line.get("wall_seconds"), (int, float))), 0.0)
        if not self._pending:
            self._start_events(kept)
        if not any(line.get("type") == "run" for line in kept):
            now = time.time()
            self._write({"type": "run", "version": VERSION, "step": 0, "time": now,
                         "started": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
                         **header, "log_every": self.log_every})
        if resumed_step is not None:
            self._write({"type": "resume", "step": resumed_step, "time": time.time(), "framework": framework,
                         "processes": processes, "wall_seconds": self._wall_before})

    def _start_events(self, kept: list[dict]) -> None:
        folder = self.folder / tensorboard.FOLDER
        if self.tensorboard_files:
            self._events = tensorboard.EventWriter(folder, [(ln["time"], ln["step"], scalars(ln)) for ln in kept])
        else:  # files of an earlier start would disagree with this record from here on
            for f in tensorboard.stale_files(folder):
                f.unlink(missing_ok=True)

    def checkpointed(self) -> None:
        """The run wrote a checkpoint: a new run's record now replaces the earlier run's."""
        if self._pending:
            os.replace(self.folder / PENDING, self.path)
            self._pending, self._target = False, self.path
            self._start_events(_kept_lines(self.path, math.inf))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._events is not None:
            self._events.close()

    # -- lines --
    def wall_seconds(self) -> float:
        return self._wall_before + time.perf_counter() - self._t0

    def _reset_interval(self) -> None:
        self._n = self._images = self._correct = 0
        self._loss_sum = self._seconds = self._waited = 0.0

    def count(self, loss: float, correct: int, images: int, seconds: float, waited: float) -> None:
        """One step: its mean loss, correct rows, rows, seconds, and seconds of those spent waiting for data."""
        self._n += 1
        self._loss_sum += loss
        self._correct += correct
        self._images += images
        self._seconds += seconds
        self._waited += waited

    def due(self, step: int) -> bool:
        return step % self.log_every == 0

    def step_line(self, step: int, stage, learning_rate: float) -> None:
        """The `step` line of the steps counted since the last one (`stage`: a ScheduleStage)."""
        if self._n:
            self._write({"type": "step", "step": step, "time": time.time(), "steps": self._n, "stage": stage.index,
                         "image_size": stage.image_size, "learning_rate": learning_rate,
                         "loss": self._loss_sum / self._n, "train_accuracy": self._correct / max(self._images, 1),
                         "images_per_second": self._images / max(self._seconds, 1e-9),
                         "data_wait_share": min(self._waited / max(self._seconds, 1e-9), 1.0),
                         "wall_seconds": self.wall_seconds(), "regularizers": dict(stage.regularizers)})
        self._reset_interval()

    def stage_line(self, rec: dict, raw: dict, ema: dict | None) -> None:
        """The `stage` line of a history record `rec` and the held-out metrics (loss, top1, top5) of the
        weights (`raw`) and of the EMA (None without one)."""
        none = {"loss": None, "top1": None, "top5": None}
        ema = ema or none
        self._write({"type": "stage", "step": rec["end_step"], "time": time.time(), "stage": rec["stage"],
                     "image_size": rec["image_size"], "eval_size": rec["eval_size"], "start_step": rec["start_step"],
                     "end_step": rec["end_step"], "steps": rec["steps"], "regularizers": rec["regularizers"],
                     "train_loss": rec["loss"], "train_accuracy": rec["train_accuracy"],
                     "heldout_loss": raw["loss"], "heldout_top1": raw["top1"], "heldout_top5": raw["top5"],
                     "ema_heldout_loss": ema["loss"], "ema_heldout_top1": ema["top1"], "ema_heldout_top5": ema["top5"],
                     "learning_rate_end": rec["learning_rate_end"], "images_per_second": rec["images_per_second"],
                     "stage_seconds": rec["seconds"], "wall_seconds": self.wall_seconds()})

    def eval_line(self, step: int, stage, eval_size: int, weights: str, at_stage: dict, at_final: dict) -> None:
        """An `eval` line: held-out metrics (loss, top1, top5) at the stage's size and at the final eval size."""
        self._write({"type": "eval", "step": step, "time": time.time(), "stage": stage.index,
                     "image_size": stage.image_size, "eval_size": eval_size, "weights": weights,
                     "heldout_loss": at_stage["loss"], "heldout_top1": at_stage["top1"],
                     "heldout_top5": at_stage["top5"], "final_size_loss": at_final["loss"],
                     "final_size_top1": at_final["top1"], "final_size_top5": at_final["top5"],
                     "wall_seconds": self.wall_seconds()})

    def _write(self, line: dict) -> None:
        if self._fd is None:
            return
        os.write(self._fd, _encode(line))
        if self._events is not None:
            self._events.add(line["time"], line["step"], scalars(line))


def scalars(line: dict) -> dict[str, float]:
    """The TensorBoard scalars of a line: `<type>/<field>` for each number, `<type>/regularizer/<name>`."""
    if line.get("type") not in ("step", "stage", "eval"):
        return {}
    out = {}
    for key, value in line.items():
        if key == "regularizers" and isinstance(value, dict):
            out.update({f"{line['type']}/regularizer/{k}": float(v) for k, v in value.items() if _number(v)})
        elif key not in NOT_SCALARS and _number(value):
            out[f"{line['type']}/{key}"] = float(value)
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finite(v):
    """JSON has no NaN: a non-finite float is written as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _encode(line: dict) -> bytes:
    return (json.dumps(_finite(line), allow_nan=False) + "\n").encode("utf-8")


def _kept_lines(path: Path, step: int) -> list[dict]:
    """The lines of an existing record up to `step` (a killed run may have written past its checkpoint);
    a torn line (a machine that lost power mid-write) is dropped too."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    kept = []
    for text in raw.split(b"\n"):
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and _number(line.get("step")) and line["step"] <= step \
                and _number(line.get("time")):
            kept.append(line)
    return kept
