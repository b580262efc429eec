"""The progressive training loop shared by every framework: plan, data, stages, checkpoints, resume.

A framework supplies a `TrainingBackend` (the model, one optimisation step, an eval forward,
its collectives and its state as canonical NumPy tensors); everything else, what a step
computes and in which order, lives here and in `plan.py`, so the oracle, PyTorch and JAX
trainers run the same loop. Rank r of W computes rows `plan.shards(W)[r]` of each global
batch; only rank 0 writes checkpoints and weights.

Checkpoints are canonical (`checkpoint.py`): model tensors by canonical name, optimiser slots
`<slot>/<name>` as the oracle's optimisers name them, the EMA shadow. So a run can resume in
another framework or with another number of processes.

NumPy only (no numba, no framework).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol

import numpy as np

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.resolve import ResolvedModel
from effv2_spec.schedule import ProgressiveSchedule, ScheduleStage
from effv2_spec.training import TrainingConfig
from effv2_spec.weights import save_weights

from .checkpoint import FILENAME, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .data.loader import BatchLoader
from .data.pipeline import StepData, eval_input
from .data.sources import Source
from .init import initial_tensors
from .plan import PlanError, TrainingPlan
from .record import RunRecord, run_header

EVAL_BATCH = 256


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) stopped being finite; the message says where and what was kept."""


class TrainingBackend(Protocol):
    """What a framework supplies to `ProgressiveLoop` (all arrays canonical NumPy, NCHW inputs)."""

    framework: str
    rank: int
    world: int

    def set_stage(self, resolved: ResolvedModel) -> None:
        """Use the stage's dropout / drop-path rates (the table differs only in those)."""

    def train_step(self, x: np.ndarray, targets: np.ndarray, masks: Mapping[str, np.ndarray], *, lr: float,
                   step: int) -> tuple[float, int]:
        """One optimisation step on this rank's rows; returns the global batch's mean loss and the
        number of its rows whose top-1 prediction is their label's argmax (summed over ranks)."""

    def logits(self, x: np.ndarray, *, use_ema: bool) -> np.ndarray:
        """Eval-mode logits (running statistics) of this rank's rows, with the EMA weights if asked."""

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks (the identity for one process)."""

    def state(self) -> tuple[dict, dict, dict]:
        """(model tensors, optimiser state, EMA shadow or {}), canonical."""

    def load_state(self, model: Mapping, optimizer: Mapping, ema: Mapping) -> None:
        """Restore `state()` output (from any framework's checkpoint)."""


@dataclass
class TrainResult:
    final_accuracy: float | None
    seconds: float
    stages: list[dict]
    steps: int
    weights_path: str | None = None
    checkpoint_path: str | None = None
    resumed_from_step: int | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"final_accuracy": self.final_accuracy, "seconds": self.seconds, "steps": self.steps,
                "stages": self.stages, "weights": self.weights_path, "checkpoint": self.checkpoint_path,
                "resumed_from_step": self.resumed_from_step, **self.extra}


def starting_tensors(plan: TrainingPlan, seed: int, dtype: str,
                     init_from: tuple[str, Mapping[str, np.ndarray]] | None) -> tuple[dict, dict | None]:
    """(tensors every backend starts from, the fine-tuning record or None).

    The seeded init of the spec; with `init_from` = (path, tensors), every tensor comes from the file
    except a classifier whose shape differs (another class count), which keeps its seeded init.
    """
    own = initial_tensors(plan.base, seed, dtype)
    if init_from is None:
        return own, None
    path, tensors = init_from
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    kept_init, problems = [], []
    for name, v in own.items():
        if name in tensors and np.shape(tensors[name]) != v.shape:
            if name.startswith("classifier."):
                kept_init.append(name)
            else:
                problems.append(f"{name} has shape {tuple(np.shape(tensors[name]))}, the spec needs {v.shape}")
    if missing or unexpected or problems:
        parts = ([f"missing {_few(missing)}"] if missing else []) + (
            [f"unexpected {_few(unexpected)}"] if unexpected else []) + problems[:2]
        raise CheckpointError(f"{path}: weights do not fit the spec '{plan.spec.name}' ({'; '.join(parts)})")
    out = {k: (own[k] if k in kept_init else np.asarray(tensors[k]).astype(own[k].dtype)) for k in own}
    digest = hashlib.sha256()
    for k in sorted(tensors):
        digest.update(k.encode())
        digest.update(np.ascontiguousarray(tensors[k]).tobytes())
    return out, {"path": str(path), "sha256": digest.hexdigest()[:16], "new_init": kept_init}


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


class ProgressiveLoop:
    """One run: `run()` trains to the schedule's end (or continues after `resume()`).

    `make_backend(plan, tensors)` builds the framework side from the plan and the starting tensors.
    `workers`: processes preparing each step's images (0 = in this process): the result does not
    depend on it.
    """

    def __init__(self, spec: ArchitectureSpec, schedule: ProgressiveSchedule, config: TrainingConfig,
                 train_data: Source, heldout: Source, make_backend: Callable[[TrainingPlan, dict], TrainingBackend],
                 *, seed: int = 0, dtype: str = "float32", out_dir: str | Path | None = None,
                 checkpoint_every: int | None = 100, eval_size: int | None = None, workers: int = 0,
                 init_from: tuple[str, Mapping[str, np.ndarray]] | None = None, log_every: int = 10,
                 tensorboard: bool = False, eval_every: int = 0):
        self.spec, self.schedule, self.config = spec, schedule, config
        self.train_data, self.heldout = train_data, heldout
        self.seed, self.dtype = int(seed), dtype
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.eval_size = eval_size or spec.input.eval_image_size
        try:
            self.plan = TrainingPlan(spec, schedule, config, len(train_data), seed=self.seed)
        except PlanError as exc:
            raise ValueError(str(exc)) from None
        self.base = self.plan.base
        self.batch = self.plan.batch_size
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.stages: list[ScheduleStage] = self.plan.stages
        self.total_steps = self.plan.total_steps
        tensors, self.init_from = starting_tensors(self.plan, self.seed, dtype, init_from)
        self.backend = make_backend(self.plan, tensors)
        try:
            self.rows = self.plan.shards(self.backend.world)[self.backend.rank]
        except PlanError as exc:
            raise ValueError(f"{exc} (one part per process)") from None
        # metrics.jsonl (record.py): output only, nothing the run computes reads it
        self.record = RunRecord(self.out_dir if self.writes else None, log_every=log_every,
                                tensorboard_files=tensorboard)
        self.data = StepData(self.plan, train_data)
        self.workers = int(workers)
        self.eval_every = int(eval_every)  # held-out `eval` lines inside stages (0: stage ends only)
        self.step = 0
        self.history: list[dict] = []
        self.partial: dict = {}  # running sums of the stage in progress
        self.last_checkpoint_step: int | None = None
        self.resumed_from: int | None = None

    @property
    def writes(self) -> bool:
        """Rank 0 alone writes checkpoints and weights."""
        return self.out_dir is not None and self.backend.rank == 0

    # -- checkpoints --
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / FILENAME if self.out_dir is not None else None

    def _meta(self) -> dict:
        return {"spec": self.spec.model_dump_json(), "schedule": self.schedule.model_dump_json(),
                "training": self.config.model_dump_json(), "seed": self.seed, "dtype": self.dtype,
                "step": self.step, "total_steps": self.total_steps, "history": self.history, "partial": self.partial,
                # nothing random has a state to save: every draw is keyed by (seed, purpose, step, row)
                "randomness": "plan.keyed_rng(seed, purpose, step, row); data order keyed by (seed, epoch)",
                "framework": self.backend.framework, "processes": self.backend.world,
                "init_from": self.init_from, "data": self._data_id()}

    def _data_id(self) -> dict:
        """Sizes and a digest of the data sets (pixels in memory, file lists and labels on disk), so a resume
        on other data is refused."""
        h = hashlib.sha256()
        for d in (self.train_data, self.heldout):
            h.update(d.fingerprint().encode())
        return {"train": len(self.train_data), "heldout": len(self.heldout), "sha256": h.hexdigest()[:16]}

    def save(self) -> None:
        model, optimizer, ema = self.backend.state()
        # BN running statistics can overflow while the parameters are still finite
        bad = [k for k, v in model.items() if not np.isfinite(v).all()]
        if bad:
            raise TrainingDiverged(f"weights became non-finite ({bad[0]}) by step {self.step}; stopped. "
                                   + self._kept())
        if self.writes:
            save_checkpoint(self.checkpoint_path, Checkpoint(self._meta(), model, optimizer, ema))
            self.record.checkpointed()
            if self.last_checkpoint_step is None:  # a new run's first checkpoint: an earlier run's weights
                (self.out_dir / "weights.safetensors").unlink(missing_ok=True)  # (--overwrite) no longer match
        self.last_checkpoint_step = self.step

    def _kept(self) -> str:
        if self.last_checkpoint_step is None or self.checkpoint_path is None:
            return "No checkpoint was written before that."
        return f"The last good checkpoint is kept: {self.checkpoint_path} (step {self.last_checkpoint_step})."

    def resume(self) -> None:
        """Restore the state of `checkpoint.npz` in out_dir (written by any framework, any process count);
        refuse one from another spec, schedule, recipe, seed, dtype or data set."""
        path = self.checkpoint_path
        if path is None:
            raise CheckpointError("--resume needs an output folder holding a checkpoint")
        ck = load_checkpoint(path)
        m = ck.meta
        for key, doc, what in (("spec", self.spec, "spec"), ("schedule", self.schedule, "schedule"),
                               ("training", self.config, "training config")):
            if m.get(key) != doc.model_dump_json():
                theirs = _doc_name(m.get(key))
                detail = f"'{theirs}' with other values" if theirs == doc.name else f"'{theirs}'"
                raise CheckpointError(f"{path}: checkpoint was written for a different {what} ({detail}; this "
                                      f"run uses '{doc.name}'); resume with the same {what} or start a new --out")
        if m.get("dtype") != self.dtype or m.get("seed") != self.seed:
            raise CheckpointError(f"{path}: checkpoint was written with seed {m.get('seed')} and dtype "
                                  f"{m.get('dtype')}; this run uses seed {self.seed} and dtype {self.dtype}")
        data = self._data_id()
        if m.get("data") != data:
            raise CheckpointError(f"{path}: checkpoint was trained on different data ({m.get('data')}); "
                                  f"this run has {data}")
        try:
            self.backend.load_state(ck.model, ck.optimizer, ck.ema)
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: checkpoint tensors do not fit this run ({exc})") from None
        self.step = int(m["step"])
        self.history = list(m.get("history", []))
        self.partial = dict(m.get("partial", {}))
        self.init_from = m.get("init_from")
        self.last_checkpoint_step = self.step
        self.resumed_from = self.step

    # -- evaluation --
    def evaluate(self, size: int) -> float:
        """Top-1 accuracy on the held-out set at size x size (EMA weights when the recipe has an EMA)."""
        return self.heldout_metrics(size, use_ema=self.config.ema is not None)["top1"]

    def heldout_metrics(self, size: int, *, use_ema: bool) -> dict:
        """Held-out top-1, top-5 and mean softmax cross-entropy of the eval logits (no label smoothing)."""
        n = len(self.heldout)
        lo, hi = n * self.backend.rank // self.backend.world, n * (self.backend.rank + 1) // self.backend.world
        sums = np.zeros(3)  # top-1 rows, top-5 rows, loss
        for i in range(lo, hi, EVAL_BATCH):
            j = min(i + EVAL_BATCH, hi)
            x = eval_input(self.heldout, i, j, size, self.base, np.dtype(self.dtype))
            sums += _scores(self.backend.logits(x, use_ema=use_ema), self.heldout.labels[i:j])
        total = self.backend.all_sum(sums)
        return {"top1": int(total[0]) / max(n, 1), "top5": int(total[1]) / max(n, 1), "loss": total[2] / max(n, 1)}

    # -- training --
    def run(self, on_step: Callable[[int, int, float], None] | None = None,
            on_stage: Callable[[dict], None] | None = None, stop_at: int | None = None) -> TrainResult:
        """Train to the schedule's end, or only to global step `stop_at` (a checkpoint is written there;
        `resume()` continues exactly)."""
        t0 = time.perf_counter()
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        self.record.start(run_header(self), self.resumed_from, self.backend.framework, self.backend.world)
        try:
            with BatchLoader(self.data, self.workers, self.rows) as loader:
                self.loader = loader
                for st in self.stages:
                    if self.step >= st.end_step:
                        continue
                    if self.step >= end:
                        break
                    self._run_stage(st, on_step, end)
                    if self.step < st.end_step:  # stopped inside the stage
                        if self.out_dir is not None:
                            self.save()
                        break
                    if on_stage is not None:
                        on_stage(self.history[-1])
        finally:
            self.record.close()
        self.backend.set_stage(self.base)
        stopped = self.step < self.total_steps
        if stopped:
            accuracy = self.history[-1]["heldout_accuracy"] if self.history else None
        else:
            accuracy = self.history[-1]["heldout_accuracy"] if self.history else self.evaluate(self.eval_size)
        weights_path = None
        if self.writes and not stopped:
            weights_path = str(self.out_dir / "weights.safetensors")
            model, _, ema = self.backend.state()
            save_weights(weights_path, self.spec, ema if ema else model)
        return TrainResult(final_accuracy=accuracy, seconds=time.perf_counter() - t0, stages=self.history,
                           steps=self.step, weights_path=weights_path,
                           checkpoint_path=str(self.checkpoint_path) if self.checkpoint_path else None,
                           resumed_from_step=self.resumed_from,
                           extra={"init_from": self.init_from, "framework": self.backend.framework,
                                  "processes": self.backend.world, "stopped_at": self.step if stopped else None})

    def _run_stage(self, st: ScheduleStage, on_step, end: int) -> None:
        resolved = self.plan.stage_resolved(st)
        self.backend.set_stage(resolved)
        acc = self.partial if self.partial.get("stage") == st.index else {
            "stage": st.index, "loss_sum": 0.0, "correct": 0, "images": 0, "seconds": 0.0}
        self.partial = acc
        dtype = np.dtype(self.dtype)
        while self.step < min(st.end_step, end):
            t = time.perf_counter()
            step = self.step
            images = self.loader.rows(step)
            waited = time.perf_counter() - t
            x, targets = self.data.assemble(step, self.rows, images, resolved, dtype)
            masks = self.plan.masks(step, self.rows, resolved, dtype)
            lr = self.plan.learning_rate(step)
            loss, correct = self.backend.train_step(x, targets, masks, lr=lr, step=step)
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss} at step {step} (stage {st.index}, learning rate "
                                       f"{lr:.4g}); stopped. " + self._kept())
            self.step += 1
            acc["loss_sum"] += loss * self.batch
            acc["correct"] += int(correct)
            acc["images"] += self.batch
            seconds = time.perf_counter() - t
            acc["seconds"] += seconds
            self.record.count(loss, int(correct), self.batch, seconds, waited)
            checkpoint = (bool(self.checkpoint_every) and self.step % self.checkpoint_every == 0
                          and self.step < st.end_step)
            # a line at every checkpoint (and stop): a resume continues from a line boundary
            if self.record.due(self.step) or self.step in (st.end_step, end) or checkpoint:
                self.record.step_line(self.step, st, lr)
            if self.eval_every and self.step % self.eval_every == 0 and self.step != st.end_step:
                self._eval_line(st)
            if on_step is not None:
                on_step(self.step, self.total_steps, loss)
            if checkpoint:
                self.save()
        if self.step < st.end_step:
            return
        # intermediate stages are measured at their own training size (a net trained at 16 px
        # is not yet meant to see 32 px); the last stage at the spec's eval size, the final figure
        eval_size = self.eval_size if st.index == self.stages[-1].index else st.image_size
        raw = self.heldout_metrics(eval_size, use_ema=False)
        ema = self.heldout_metrics(eval_size, use_ema=True) if self.config.ema is not None else None
        heldout = (ema or raw)["top1"]
        n = max(acc["images"], 1)
        self.history.append({
            "stage": st.index, "image_size": st.image_size, "start_step": st.start_step, "end_step": st.end_step,
            "steps": st.steps, "regularizers": dict(st.regularizers), "eval_size": eval_size,
            "loss": acc["loss_sum"] / n, "train_accuracy": acc["correct"] / n, "heldout_accuracy": heldout,
            "images_per_second": acc["images"] / max(acc["seconds"], 1e-9), "seconds": acc["seconds"],
            "learning_rate_end": self.plan.learning_rate(self.step - 1),
        })
        self.record.stage_line(self.history[-1], raw, ema)  # before the checkpoint, as every line
        self.partial = {}
        if self.out_dir is not None:
            self.save()


    def _eval_line(self, st: ScheduleStage) -> None:
        """Held-out metrics at the stage's size and at the final eval size (one pass when they are equal);
        every rank takes part (the sums are reduced), rank 0 writes."""
        use_ema = self.config.ema is not None
        at_stage = self.heldout_metrics(st.image_size, use_ema=use_ema)
        at_final = at_stage if st.image_size == self.eval_size else self.heldout_metrics(self.eval_size,
                                                                                           use_ema=use_ema)
        self.record.eval_line(self.step, st, self.eval_size, "ema" if use_ema else "raw", at_stage, at_final)


def _scores(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(rows whose top-1 is the label, rows with the label in the top 5, summed cross-entropy)."""
    logits = np.asarray(logits, dtype=np.float64)
    label_logit = logits[np.arange(len(labels)), labels]
    top1 = int((logits.argmax(axis=1) == labels).sum())
    top5 = int(((logits > label_logit[:, None]).sum(axis=1) < 5).sum())
    peak = logits.max(axis=1)
    loss = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1)) - label_logit
    return np.array([top1, top5, loss.sum()])


def _doc_name(doc_json: str | None) -> str:
    try:
        return json.loads(doc_json).get("name", "?")
    except (TypeError, ValueError, AttributeError):
        return "?"
