"""Progressive training with the oracle (EfficientNetV2 Algorithm 1), resumable bit for bit.

Per stage of `ProgressiveSchedule.stages()`: the training images are resized to the stage's
size and the stage's regularisers apply (dropout before the classifier, drop-path rate,
RandAugment magnitude, mixup alpha); the model's weights carry over. Each step: batch ->
RandAugment -> resize -> normalise -> mixup -> forward (train) -> softmax cross-entropy with
label smoothing -> backward -> optimiser (L2 by role inside) at `learning_rate_at` -> EMA.

Determinism and resume: one seed fixes everything. The model's initialisation and its
dropout / drop-path masks come from the model's generator (saved in checkpoints); the data
order comes from a generator keyed by (seed, epoch) and the augmentation and mixup draws from
one keyed by (seed, step). So a run resumed at step k replays exactly the draws an
uninterrupted run makes from step k on, and ends with identical weights.

A non-finite loss (or non-finite weights at a checkpoint) stops the run with
`TrainingDiverged`; the checkpoint on disk is then the last one written from finite weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.resolve import ResolvedModel, resolve
from effv2_spec.schedule import ProgressiveSchedule, ScheduleStage
from effv2_spec.training import TrainingConfig, learning_rate_at
from effv2_spec.weights import save_weights

from .checkpoint import FILENAME, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .data.pipeline import to_input, training_batch
from .data.sources import Dataset
from .ema import WeightEMA
from .model import ReferenceModel
from .ops.loss import softmax_cross_entropy
from .optim import build_optimizer

#: regularisers the loop applies; a schedule naming another with a non-zero value is refused
SUPPORTED_REGULARIZERS = ("dropout", "drop_path_rate", "randaugment_magnitude", "mixup_alpha")
EVAL_BATCH = 256


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) stopped being finite; the message says where and what was kept."""


@dataclass
class TrainResult:
    final_accuracy: float
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


# ---- per-stage regularisation on the model ---------------------------------------------------
def stage_view(base: ResolvedModel, regularizers: dict[str, float]) -> ResolvedModel:
    """`base` re-resolved with the stage's dropout / drop-path rate (resolve owns per-block rates)."""
    changes = {k: v for k, v in regularizers.items() if k in ("dropout", "drop_path_rate")}
    if not changes:
        return base
    doc = base.spec.model_dump(mode="json")
    if "dropout" in changes:
        doc["head"]["dropout"] = changes["dropout"]
    if "drop_path_rate" in changes:
        doc["conventions"]["stochastic_depth"]["rate"] = changes["drop_path_rate"]
    # JSON mode (lists stand for tuples), as every spec document is read
    return resolve(ArchitectureSpec.model_validate_json(json.dumps(doc)), image_size=base.image_size)


# ---- evaluation ------------------------------------------------------------------------------
def evaluate(model: ReferenceModel, data: Dataset, size: int) -> float:
    """Top-1 accuracy of eval-mode forwards (running BN statistics) at size x size."""
    correct = 0
    for i in range(0, len(data), EVAL_BATCH):
        x = to_input(data.images[i:i + EVAL_BATCH], size, model.resolved, model.dtype)
        logits = model.forward(x, training=False)
        correct += int((logits.argmax(axis=1) == data.labels[i:i + EVAL_BATCH]).sum())
    return correct / max(len(data), 1)


def evaluate_with(model: ReferenceModel, tensors: dict[str, np.ndarray] | None, data: Dataset, size: int) -> float:
    """Accuracy with `tensors` (e.g. the EMA shadow) swapped in, the model's own state restored after."""
    if tensors is None:
        return evaluate(model, data, size)
    saved = model.state_dict()
    model.load_state_dict(tensors)
    try:
        return evaluate(model, data, size)
    finally:
        model.load_state_dict(saved)


# ---- the loop --------------------------------------------------------------------------------
class Trainer:
    """Holds the model, optimiser, EMA and data of one run; `run()` trains to the schedule's end."""

    def __init__(self, spec: ArchitectureSpec, schedule: ProgressiveSchedule, config: TrainingConfig,
                 train_data: Dataset, heldout: Dataset, *, seed: int = 0, dtype: str = "float32",
                 out_dir: str | Path | None = None, checkpoint_every: int | None = 100,
                 eval_size: int | None = None):
        self.spec, self.schedule, self.config = spec, schedule, config
        self.train_data, self.heldout = train_data, heldout
        self.seed, self.dtype = int(seed), dtype
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.base = resolve(spec)
        self.eval_size = eval_size or spec.input.eval_image_size
        self.batch = min(config.batch_size, len(train_data))
        self.steps_per_epoch = max(1, len(train_data) // self.batch)
        try:
            self.stages: list[ScheduleStage] = schedule.stages(self.steps_per_epoch)
        except ValueError as exc:
            raise ValueError(f"schedule: {exc}") from None
        self.total_steps = self.stages[-1].end_step
        for st in self.stages:
            for name, value in st.regularizers.items():
                if name not in SUPPORTED_REGULARIZERS and value != 0:
                    raise ValueError(f"regularizers.{name}: not supported by the oracle's trainer "
                                     f"(supported: {', '.join(SUPPORTED_REGULARIZERS)})")
        self.model = ReferenceModel(self.base, dtype=dtype, seed=self.seed)
        self.optimizer = build_optimizer(config, self.base)
        self.ema = WeightEMA(config.ema, self.model.state_dict()) if config.ema is not None else None
        self.step = 0
        self.history: list[dict] = []
        self.partial: dict = {}  # running sums of the stage in progress
        self.last_checkpoint_step: int | None = None
        self.resumed_from: int | None = None

    # -- data draws, keyed so that any step can be reproduced without replaying earlier ones --
    def batch_indices(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.train_data))
        return perm[pos * self.batch:(pos + 1) * self.batch]

    def step_rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 2, step])

    # -- checkpoints --
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / FILENAME if self.out_dir is not None else None

    def _meta(self) -> dict:
        return {"spec": self.spec.model_dump_json(), "schedule": self.schedule.model_dump_json(),
                "training": self.config.model_dump_json(), "seed": self.seed, "dtype": self.dtype,
                "step": self.step, "total_steps": self.total_steps, "model_rng": self.model.rng.bit_generator.state,
                "history": self.history, "partial": self.partial,
                # data order and augmentation need no generator state: they are keyed by (seed, epoch/step)
                "data_rng": "default_rng([seed, 1, epoch]) orders an epoch; default_rng([seed, 2, step]) augments",
                "data": self._data_id()}

    def _data_id(self) -> dict:
        """Sizes and a digest of the images and labels, so a resume on other data is refused."""
        h = hashlib.sha256()
        for d in (self.train_data, self.heldout):
            h.update(np.ascontiguousarray(d.images).tobytes())
            h.update(d.labels.astype("<i8").tobytes())
        return {"train": len(self.train_data), "heldout": len(self.heldout), "sha256": h.hexdigest()[:16]}

    def save(self) -> None:
        if self.checkpoint_path is None:
            return
        # BN running statistics can overflow while the parameters are still finite
        bad = [k for k, v in {**self.model.params, **self.model.buffers}.items() if not np.isfinite(v).all()]
        if bad:
            raise TrainingDiverged(f"weights became non-finite ({bad[0]}) by step {self.step}; stopped. "
                                   + self._kept())
        save_checkpoint(self.checkpoint_path, Checkpoint(
            self._meta(), self.model.state_dict(), self.optimizer.state_dict(),
            self.ema.state_dict() if self.ema is not None else {}))
        self.last_checkpoint_step = self.step

    def _kept(self) -> str:
        if self.last_checkpoint_step is None:
            return "No checkpoint was written before that."
        return f"The last good checkpoint is kept: {self.checkpoint_path} (step {self.last_checkpoint_step})."

    def resume(self) -> None:
        """Restore the state of `checkpoint.npz` in out_dir; refuse one from another spec/schedule/recipe."""
        path = self.checkpoint_path
        if path is None:
            raise CheckpointError("--resume needs an output folder holding a checkpoint")
        ck = load_checkpoint(path)
        m = ck.meta
        for key, doc, what in (("spec", self.spec, "spec"), ("schedule", self.schedule, "schedule"),
                               ("training", self.config, "training config")):
            if m.get(key) != doc.model_dump_json():
                theirs = _doc_name(m.get(key))
                raise CheckpointError(f"{path}: checkpoint was written for a different {what} ({theirs!r}, this "
                                      f"run uses {doc.name!r}); resume with the same {what} or start a new --out")
        if m.get("dtype") != self.dtype or m.get("seed") != self.seed:
            raise CheckpointError(f"{path}: checkpoint was written with seed {m.get('seed')} and dtype "
                                  f"{m.get('dtype')}; this run uses seed {self.seed} and dtype {self.dtype}")
        data = self._data_id()
        if m.get("data") != data:
            raise CheckpointError(f"{path}: checkpoint was trained on different data ({m.get('data')}); "
                                  f"this run has {data}")
        try:
            self.model.load_state_dict(ck.model)
            self.optimizer.load_state_dict(ck.optimizer)
            if self.ema is not None:
                self.ema.load_state_dict(ck.ema)
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: checkpoint tensors do not fit this run ({exc})") from None
        self.model.rng.bit_generator.state = m["model_rng"]
        self.step = int(m["step"])
        self.history = list(m.get("history", []))
        self.partial = dict(m.get("partial", {}))
        self.last_checkpoint_step = self.step
        self.resumed_from = self.step

    # -- training --
    def run(self, on_step: Callable[[int, int, float], None] | None = None,
            on_stage: Callable[[dict], None] | None = None) -> TrainResult:
        t0 = time.perf_counter()
        for st in self.stages:
            if self.step >= st.end_step:
                continue
            self._run_stage(st, on_step)
            record = self.history[-1]
            if on_stage is not None:
                on_stage(record)
        self.model.set_resolved(self.base)
        final_tensors = self.ema.shadow if self.ema is not None else None
        accuracy = (self.history[-1]["heldout_accuracy"] if self.history
                    else evaluate_with(self.model, final_tensors, self.heldout, self.eval_size))
        weights_path = None
        if self.out_dir is not None:
            weights_path = str(self.out_dir / "weights.safetensors")
            tensors = final_tensors if final_tensors is not None else self.model.state_dict()
            save_weights(weights_path, self.spec, tensors)
        return TrainResult(final_accuracy=accuracy, seconds=time.perf_counter() - t0, stages=self.history,
                           steps=self.step, weights_path=weights_path,
                           checkpoint_path=str(self.checkpoint_path) if self.checkpoint_path else None,
                           resumed_from_step=self.resumed_from)

    def _run_stage(self, st: ScheduleStage, on_step) -> None:
        regs = st.regularizers
        self.model.set_resolved(stage_view(self.base, regs))
        magnitude = float(regs.get("randaugment_magnitude", 0.0))
        alpha = float(regs.get("mixup_alpha", 0.0))
        acc = self.partial if self.partial.get("stage") == st.index else {
            "stage": st.index, "loss_sum": 0.0, "correct": 0, "images": 0, "seconds": 0.0}
        self.partial = acc
        cfg = self.config
        while self.step < st.end_step:
            t = time.perf_counter()
            idx = self.batch_indices(self.step)
            labels = self.train_data.labels[idx]
            x, targets = training_batch(
                self.train_data.images[idx], labels, size=st.image_size, resolved=self.model.resolved,
                randaugment_layers=cfg.randaugment_layers, magnitude=magnitude, mixup_alpha=alpha,
                rng=self.step_rng(self.step), dtype=self.model.dtype)
            logits = self.model.forward(x, training=True)
            loss, dlogits = softmax_cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing)
            lr = learning_rate_at(cfg, self.step, self.steps_per_epoch, self.total_steps)
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss} at step {self.step} (stage {st.index}, "
                                       f"learning rate {lr:.4g}); stopped. " + self._kept())
            grads = self.model.backward(dlogits)
            self.optimizer.step(self.model.params, grads, lr)
            self.step += 1
            if self.ema is not None:
                self.ema.update({**self.model.params, **self.model.buffers}, self.step)
            acc["loss_sum"] += loss * len(idx)
            acc["correct"] += int((logits.argmax(axis=1) == labels).sum())
            acc["images"] += len(idx)
            acc["seconds"] += time.perf_counter() - t
            if on_step is not None:
                on_step(self.step, self.total_steps, loss)
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.step < st.end_step:
                self.save()
        # intermediate stages are measured at their own training size (a net trained at 16 px
        # is not yet meant to see 32 px); the last stage at the spec's eval size, the final figure
        eval_size = self.eval_size if st.index == self.stages[-1].index else st.image_size
        heldout = evaluate_with(self.model, self.ema.shadow if self.ema is not None else None,
                                self.heldout, eval_size)
        n = max(acc["images"], 1)
        self.history.append({
            "stage": st.index, "image_size": st.image_size, "start_step": st.start_step, "end_step": st.end_step,
            "steps": st.steps, "regularizers": dict(regs), "eval_size": eval_size, "loss": acc["loss_sum"] / n,
            "train_accuracy": acc["correct"] / n, "heldout_accuracy": heldout,
            "images_per_second": acc["images"] / max(acc["seconds"], 1e-9), "seconds": acc["seconds"],
            "learning_rate_end": learning_rate_at(cfg, self.step - 1, self.steps_per_epoch, self.total_steps),
        })
        self.partial = {}
        self.save()


def _doc_name(doc_json: str | None) -> str:
    try:
        return json.loads(doc_json).get("name", "?")
    except (TypeError, ValueError):
        return "?"


def train(spec: ArchitectureSpec, schedule: ProgressiveSchedule, config: TrainingConfig, train_data: Dataset,
          heldout: Dataset, *, seed: int = 0, dtype: str = "float32", out_dir: str | Path | None = None,
          resume: bool = False, checkpoint_every: int | None = 100, on_step=None, on_stage=None) -> TrainResult:
    """Train `spec` on `train_data` by `schedule` and `config`; evaluate on `heldout` after each stage."""
    trainer = Trainer(spec, schedule, config, train_data, heldout, seed=seed, dtype=dtype, out_dir=out_dir,
                      checkpoint_every=checkpoint_every)
    if resume:
        trainer.resume()
    return trainer.run(on_step=on_step, on_stage=on_stage)
