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

from .data.pipeline import to_input
from .data.sources import Dataset
from .ema import WeightEMA
from .model import ReferenceModel
from .ops.loss import softmax_cross_entropy
from .optim import build_optimizer
from .plan import SUPPORTED_REGULARIZERS, TrainingPlan, stage_view  # noqa: F401 (re-exported)
from .trainloop import EVAL_BATCH, ProgressiveLoop, TrainingDiverged, TrainResult, frozen_names  # noqa: F401


# ---- evaluation of a bare model ----------------------------------------------------------------
def evaluate(model: ReferenceModel, data: Dataset, size: int) -> float:
    """Top-1 accuracy of eval-mode forwards (running BN statistics) at size x size."""
    correct = 0
    for i in range(0, len(data), EVAL_BATCH):
        x = to_input(data.images[i:i + EVAL_BATCH], size, model.resolved, model.dtype)
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


def evaluate_with(model: ReferenceModel, tensors: dict[str, np.ndarray] | None, data: Dataset, size: int) -> float:
    """Accuracy with `tensors` (e.g. the EMA shadow) swapped in, the model's own state restored after."""
    with swapped_in(model, tensors):
        return evaluate(model, data, size)


# ---- the oracle's side of a step ------------------------------------------------------------------
class OracleBackend:
    """`TrainingBackend` of the NumPy/Numba oracle: one process, the whole global batch."""

    framework = "reference"
    rank, world = 0, 1

    def __init__(self, plan: TrainingPlan, tensors: Mapping[str, np.ndarray], dtype: str):
        config = plan.config
        self.plan, self.config = plan, config
        self.model = ReferenceModel(plan.base, dtype=dtype, seed=plan.seed)
        self.model.load_state_dict(tensors)
        self.frozen_bn = config.batch_norm.mode == "frozen"
        frozen = frozen_names(config, self.model.params)
        self.trainable = [n for n in self.model.params if n not in frozen]
        self.optimizer = build_optimizer(config, plan.base)
        self.ema = WeightEMA(config.ema, self.model.state_dict()) if config.ema is not None else None

    def set_stage(self, resolved: ResolvedModel) -> None:
        self.model.set_resolved(resolved)

    def train_step(self, x, targets, masks, *, lr: float, step: int) -> tuple[float, int]:
        model = self.model
        logits = model.forward(x, training=True, masks=masks, bn_group_size=self.plan.bn_group_size,
                               frozen_bn=self.frozen_bn)
        loss, dlogits = softmax_cross_entropy(logits, targets, label_smoothing=self.config.label_smoothing)
        correct = int((logits.argmax(axis=1) == targets.argmax(axis=1)).sum())
        if not np.isfinite(loss):
            return loss, correct
        grads = model.backward(dlogits)
        params = model.params if len(self.trainable) == len(model.params) else {
            n: model.params[n] for n in self.trainable}
        self.optimizer.step(params, grads, lr)
        if self.ema is not None:
            self.ema.update({**model.params, **model.buffers}, step + 1)
        return loss, correct

    def logits(self, x, *, use_ema: bool) -> np.ndarray:
        with swapped_in(self.model, self.ema.shadow if use_ema and self.ema is not None else None):
            return self.model.forward(x, training=False)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        return values

    def state(self) -> tuple[dict, dict, dict]:
        return (self.model.state_dict(), self.optimizer.state_dict(),
                self.ema.state_dict() if self.ema is not None else {})

    def load_state(self, model, optimizer, ema) -> None:
        self.model.load_state_dict(model)
        self.optimizer.load_state_dict(optimizer)
        if self.ema is not None:
            self.ema.load_state_dict(ema)


class Trainer(ProgressiveLoop):
    """The oracle's progressive run; `.model`, `.optimizer` and `.ema` are the oracle's objects."""

    def __init__(self, spec: ArchitectureSpec, schedule: ProgressiveSchedule, config: TrainingConfig,
                 train_data: Dataset, heldout: Dataset, *, seed: int = 0, dtype: str = "float32",
                 out_dir: str | Path | None = None, checkpoint_every: int | None = 100,
                 eval_size: int | None = None, workers: int = 0, init_from=None):
        super().__init__(spec, schedule, config, train_data, heldout,
                         lambda plan, tensors: OracleBackend(plan, tensors, dtype), seed=seed, dtype=dtype,
                         out_dir=out_dir, checkpoint_every=checkpoint_every, eval_size=eval_size,
                         workers=workers, init_from=init_from)

    @property
    def model(self) -> ReferenceModel:
        return self.backend.model

    @property
    def optimizer(self):
        return self.backend.optimizer

    @property
    def ema(self) -> WeightEMA | None:
        return self.backend.ema


def train(spec: ArchitectureSpec, schedule: ProgressiveSchedule, config: TrainingConfig, train_data: Dataset,
          heldout: Dataset, *, seed: int = 0, dtype: str = "float32", out_dir: str | Path | None = None,
          resume: bool = False, checkpoint_every: int | None = 100, on_step=None, on_stage=None,
          workers: int = 0) -> TrainResult:
    """Train `spec` on `train_data` by `schedule` and `config`; evaluate on `heldout` after each stage."""
    trainer = Trainer(spec, schedule, config, train_data, heldout, seed=seed, dtype=dtype, out_dir=out_dir,
                      checkpoint_every=checkpoint_every, workers=workers)
    if resume:
        trainer.resume()
    return trainer.run(on_step=on_step, on_stage=on_stage)
