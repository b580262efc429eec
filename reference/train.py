"""Progressive training with the oracle (EfficientNetV2 Algorithm 1), resumable bit for bit.

The loop itself (plan, data, stages, checkpoints, resume) is `trainloop.ProgressiveLoop`, shared
with the PyTorch and JAX trainers; this module supplies the oracle's side of a step: forward in
train mode (BN statistics per group of the plan, or frozen BN; the plan's dropout / drop-path
masks) -> softmax cross-entropy with label smoothing -> backward -> optimiser (L2 by role inside)
-> EMA of weights and BN statistics.

A non-finite loss (or non-finite weights at a checkpoint) stops the run with
`TrainingDiverged`; the checkpoint on disk is then the last one written from finite weights.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Mapping

import numpy as np

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.resolve import ResolvedModel
from effv2_spec.schedule import ProgressiveSchedule
from effv2_spec.training import TrainingConfig

from effv2_train.data.pipeline import eval_input
from effv2_train.data.sources import Source
from .ema import WeightEMA
from .model import ReferenceModel
from .ops.loss import softmax_cross_entropy
from .ops.batchnorm import BatchNormSync
from .optim import build_optimizer
from effv2_train.plan import SUPPORTED_REGULARIZERS, PlanError, TrainingPlan, stage_view  # noqa: F401 (re-exported)
from effv2_train.recipe import Recipe, batch_norm_layout  # noqa: F401 (batch_norm_layout re-exported)
from .replicas import run_replicas
from effv2_train.trainloop import EVAL_BATCH, ProgressiveLoop, TrainingDiverged, TrainResult  # noqa: F401


# ---- evaluation of a bare model ----------------------------------------------------------------
def evaluate(model: ReferenceModel, data: Source, size: int) -> float:
    """Top-1 accuracy of eval-mode forwards (running BN statistics) at size x size."""
    correct = 0
    for i in range(0, len(data), EVAL_BATCH):
        x = eval_input(data, i, min(i + EVAL_BATCH, len(data)), size, model.resolved, model.dtype)
        logits = model.forward(x, training=False)
        correct += int((logits.argmax(axis=1) == data.labels[i:i + EVAL_BATCH]).sum())
    return correct / max(len(data), 1)


@contextlib.contextmanager
def swapped_in(model: ReferenceModel, tensors: Mapping[str, np.ndarray] | None):
    """`tensors` (e.g. the EMA shadow) loaded into `model` inside the block, its own state restored after."""
    if tensors is None:
        yield model
        return
    saved = model.state_dict()
    model.load_state_dict(tensors)
    try:
        yield model
    finally:
        model.load_state_dict(saved)


def evaluate_with(model: ReferenceModel, tensors: dict[str, np.ndarray] | None, data: Source, size: int) -> float:
    """Accuracy with `tensors` (e.g. the EMA shadow) swapped in, the model's own state restored after."""
    with swapped_in(model, tensors):
        return evaluate(model, data, size)


# ---- the oracle's side of a step ------------------------------------------------------------------
class OracleBackend:
    """`TrainingBackend` of the NumPy/Numba oracle: the whole global batch in one process, or with a
    `replica` (replicas.py) this process's shard of it: BN statistics of groups spanning processes,
    the loss, the accuracy and the gradients are summed over the processes, whose identical optimiser
    steps then keep identical weights."""

    framework = "reference"

    def __init__(self, plan: TrainingPlan, tensors: Mapping[str, np.ndarray], dtype: str, replica=None):
        config = plan.config
        self.plan, self.config, self.replica = plan, config, replica
        self.rank, self.world = (replica.rank, replica.world) if replica is not None else (0, 1)
        self.bn_group_size, span = batch_norm_layout(plan, self.world)
        self.bn_sync = None
        if self.world > 1:
            self.bn_sync = BatchNormSync(
                group_sum=(lambda a: replica.group_sum(a, span)) if span > 1 else None,
                group_gather=(lambda a: replica.group_gather(a, span)) if span > 1 else None, span=span,
                replica_mean=replica.mean if span < self.world else None)  # a group over all: identical already
        self.model = ReferenceModel(plan.base, dtype=dtype, seed=plan.seed)
        self.model.load_state_dict(tensors)
        self.recipe = Recipe.of(config, plan.base)
        self.frozen_bn = self.recipe.frozen_bn
        self.trainable = [n for n in self.model.params if n not in self.recipe.frozen]
        self.optimizer = build_optimizer(config, plan.base)
        self.ema = WeightEMA(config.ema, self.model.state_dict()) if config.ema is not None else None

    def set_stage(self, resolved: ResolvedModel) -> None:
        self.model.set_resolved(resolved)

    def train_step(self, x, targets, masks, *, lr: float, step: int) -> tuple[float, int]:
        model = self.model
        logits = model.forward(x, training=True, masks=masks, bn_group_size=self.bn_group_size,
                               frozen_bn=self.frozen_bn, bn_sync=self.bn_sync)
        loss, dlogits = softmax_cross_entropy(logits, targets, label_smoothing=self.config.label_smoothing)
        correct = int((logits.argmax(axis=1) == targets.argmax(axis=1)).sum())
        if self.world > 1:  # the loss is the mean over the global batch: this shard's rows weigh rows / batch
            share = len(x) / self.plan.batch_size
            total = self.replica.all_sum(np.array([loss * share, correct], dtype=np.float64))
            loss, correct = float(total[0]), int(round(total[1]))
            dlogits = (dlogits * share).astype(dlogits.dtype)
        if not np.isfinite(loss):
            return loss, correct
        grads, flat = model.backward(dlogits), None
        if self.world > 1:
            grads, flat = self._summed(grads)
        params = model.params if len(self.trainable) == len(model.params) else {
            n: model.params[n] for n in self.trainable}
        self.optimizer.step(params, grads, lr, flat_grads=flat)
        if self.ema is not None:
            self.ema.update({**model.params, **model.buffers}, step + 1)
        return loss, correct

    def _summed(self, grads: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The trainable gradients summed over the processes, in one message: by name, and that message."""
        flat = self.replica.all_sum(np.concatenate([grads[n].ravel() for n in self.trainable]))
        out, at = {}, 0
        for n in self.trainable:
            size = grads[n].size
            out[n] = flat[at:at + size].reshape(grads[n].shape)
            at += size
        return out, flat

    def logits(self, x, *, use_ema: bool) -> np.ndarray:
        with swapped_in(self.model, self.ema.shadow if use_ema and self.ema is not None else None):
            return self.model.forward(x, training=False)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        return self.replica.all_sum(values) if self.world > 1 else values

    def state(self) -> tuple[dict, dict, dict]:
        return (self.model.state_dict(), self.optimizer.state_dict(),
                self.ema.state_dict() if self.ema is not None else {})

    def load_state(self, model, optimizer, ema) -> None:
        self.model.load_state_dict(model)
        self.optimizer.load_state_dict(optimizer)
        if self.ema is not None:
            self.ema.load_state_dict(ema)


class Trainer(ProgressiveLoop):
    """The oracle's progressive run; `.model`, `.optimizer` and `.ema` are the oracle's objects.

    `replica`: this process's handle when several oracle processes share the run (`train(processes=N)`,
    `effv2 train --nproc N`; replicas.py); each then computes its shard of every batch."""

    def __init__(self, spec: ArchitectureSpec, schedule: ProgressiveSchedule, config: TrainingConfig,
                 train_data: Source, heldout: Source, *, seed: int = 0, dtype: str = "float32",
                 out_dir: str | Path | None = None, checkpoint_every: int | None = 100,
                 eval_size: int | None = None, workers: int = 0, init_from=None, replica=None, log_every: int = 10,
                 tensorboard: bool = False, eval_every: int = 0):
        super().__init__(spec, schedule, config, train_data, heldout,
                         lambda plan, tensors: OracleBackend(plan, tensors, dtype, replica), seed=seed, dtype=dtype,
                         out_dir=out_dir, checkpoint_every=checkpoint_every, eval_size=eval_size,
                         workers=workers, init_from=init_from, log_every=log_every, tensorboard=tensorboard,
                         eval_every=eval_every)

    @property
    def model(self) -> ReferenceModel:
        return self.backend.model

    @property
    def optimizer(self):
        return self.backend.optimizer

    @property
    def ema(self) -> WeightEMA | None:
        return self.backend.ema


def train(spec: ArchitectureSpec, schedule: ProgressiveSchedule, config: TrainingConfig, train_data: Source,
          heldout: Source, *, seed: int = 0, dtype: str = "float32", out_dir: str | Path | None = None,
          resume: bool = False, checkpoint_every: int | None = 100, on_step=None, on_stage=None,
          workers: int = 0, processes: int = 1, timeout_s: float = 600.0) -> TrainResult:
    """Train `spec` on `train_data` by `schedule` and `config`; evaluate on `heldout` after each stage.

    processes > 1: that many oracle processes on this machine, each computing its shard of every batch
    (the same run up to floating-point rounding; callbacks run in the first process)."""

    def rank_main(replica):
        trainer = Trainer(spec, schedule, config, train_data, heldout, seed=seed, dtype=dtype, out_dir=out_dir,
                          checkpoint_every=checkpoint_every, workers=workers, replica=replica)
        if resume:
            trainer.resume()
        lead = trainer.backend.rank == 0
        return trainer.run(on_step=on_step if lead else None, on_stage=on_stage if lead else None)

    if processes == 1:
        return rank_main(None)
    return run_replicas(processes, rank_main, capacity_bytes=replica_capacity(spec, dtype), timeout_s=timeout_s)


def replica_capacity(spec: ArchitectureSpec, dtype: str) -> int:
    """Bytes of the largest message a training process sends: every gradient at once."""
    from effv2_spec.resolve import resolve

    return sum(int(np.prod(p.shape)) for p in resolve(spec).params) * np.dtype(dtype).itemsize + 4096
