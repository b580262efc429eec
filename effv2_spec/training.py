"""`TrainingConfig`: optimiser, learning-rate schedule, weight decay, label smoothing, EMA.

Defaults are the official EfficientNetV2 ImageNet recipe (google/automl hparams.py):
RMSProp (decay 0.9, momentum 0.9, eps 1e-3 inside the sqrt, accumulator starting at 1),
lr 0.016 per 256 images, 5 warm-up epochs, x0.97 every 2.4 epochs, L2 1e-5 on conv and
dense kernels, label smoothing 0.1, EMA 0.9999.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, model_validator

from .base import SPEC_VERSION, SafeName, SpecModel

#: Parameter roles (from the resolved parameter table) that weight decay can target.
ParamRole = Literal[
    "conv_kernel", "depthwise_kernel", "se_kernel", "se_bias", "dense_kernel", "dense_bias", "bn_gamma", "bn_beta"
]


class SGD(SpecModel):
    """SGD: v = momentum * v + g; w -= lr * v (nesterov: w -= lr * (g + momentum * v))."""

    type: Literal["sgd"]
    slots: ClassVar[tuple[str, ...]] = ("momentum",)
    """Canonical per-tensor state (checkpoints: `momentum/<tensor>`): v."""
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """Momentum coefficient; 0 is plain gradient descent."""
    nesterov: bool = False
    """Nesterov momentum (PyTorch formulation)."""


class RMSProp(SpecModel):
    """RMSProp with the two conventions that differ between TF and PyTorch stated."""

    type: Literal["rmsprop"]
    slots: ClassVar[tuple[str, ...]] = ("ms", "mom")
    """Canonical per-tensor state: the mean square and the momentum buffer (lr inside it or not, as below)."""
    decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """ms = decay * ms + (1 - decay) * g^2 (TF `decay`/`rho`, PyTorch `alpha`)."""
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """Momentum on the scaled step."""
    eps: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    """Stability constant."""
    eps_placement: Literal["inside_sqrt", "outside_sqrt"] = "inside_sqrt"
    """TF: g / sqrt(ms + eps); PyTorch: g / (sqrt(ms) + eps)."""
    initial_accumulator: Annotated[float, Field(ge=0.0)] = 1.0
    """Starting value of ms: TF1 RMSPropOptimizer 1.0; PyTorch and Keras 2+ 0.0."""
    lr_in_momentum: bool = True
    """TF: mom = m * mom + lr * g/rms, w -= mom; PyTorch: buf = m * buf + g/rms, w -= lr * buf.
    Identical for a constant lr, different when the lr changes."""


class AdamW(SpecModel):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW and optax.adamw compute it.

    At step t (1-based, counted over the whole run), from the gradient g the recipe gives (coupled L2
    `weight_decay.rate` added, then clipped, as for every optimiser):
    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2  (both start at 0);
    w -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + lr * weight_decay * w,
    the decay term only on the tensors whose role is in the training config's `weight_decay.applies_to`,
    taken from w before the step."""

    type: Literal["adamw"]
    slots: ClassVar[tuple[str, ...]] = ("exp_avg", "exp_avg_sq")
    """Canonical per-tensor state: m and v, without bias correction; t is the checkpoint's step count."""
    beta1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """Decay of the first moment m."""
    beta2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.999
    """Decay of the second moment v."""
    eps: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-8
    """Added to the bias-corrected sqrt(v), outside the sqrt (PyTorch and optax)."""
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    """Decoupled decay: w -= lr * weight_decay * w on the roles of `weight_decay.applies_to`, not through m
    and v (PyTorch's default 0.01). Independent of the coupled L2 `weight_decay.rate`, which still adds
    rate * w to the gradient when it is not 0 (set it to 0 for plain AdamW)."""


#: the optimisers a training document can name, each with its canonical slot names (`slots`)
OPTIMIZERS = (SGD, RMSProp, AdamW)

Optimizer = Annotated[Union[OPTIMIZERS], Field(discriminator="type")]


class ExponentialDecay(SpecModel):
    """lr = base * factor ** (epoch / every_epochs), floored when staircase; counted from step 0."""

    type: Literal["exponential"]
    factor: Annotated[float, Field(gt=0.0, le=1.0)] = 0.97
    every_epochs: Annotated[float, Field(gt=0.0)] = 2.4
    staircase: bool = True


class CosineDecay(SpecModel):
    """lr = base * 0.5 * (1 + cos(pi * step / total_steps))."""

    type: Literal["cosine"]


class ConstantLR(SpecModel):
    """lr = base."""

    type: Literal["constant"]


LRDecay = Annotated[Union[ExponentialDecay, CosineDecay, ConstantLR], Field(discriminator="type")]


class LearningRate(SpecModel):
    """Peak lr = base * batch_size / reference_batch_size, linear warm-up from 0, then decay."""

    base: Annotated[float, Field(gt=0.0, le=100.0)] = 0.016
    """Learning rate per `reference_batch_size` images (official: 0.016 per 256)."""
    reference_batch_size: Annotated[int, Field(ge=1)] = 256
    """Batch size `base` refers to; the peak lr scales linearly with the real batch size."""
    warmup_epochs: Annotated[float, Field(ge=0.0)] = 5.0
    """Linear warm-up from 0 (official: 5 epochs)."""
    decay: LRDecay = ExponentialDecay(type="exponential")
    """Decay after (and, for exponential, counted from the start including) warm-up."""
    minimum: Annotated[float, Field(ge=0.0)] = 0.0
    """Floor on the learning rate."""


class WeightDecay(SpecModel):
    """Coupled L2 in the loss: rate * sum(w^2) / 2 over the tensors whose role is listed (also the tensors
    AdamW's decoupled `weight_decay` applies to)."""

    rate: Annotated[float, Field(ge=0.0, le=1.0)] = 1e-5
    """L2 coefficient (official: 1e-5)."""
    applies_to: tuple[ParamRole, ...] = ("conv_kernel", "depthwise_kernel", "se_kernel", "dense_kernel")
    """Parameter roles that decay (official: kernels only, no biases, no BN gamma/beta)."""


class EMA(SpecModel):
    """Exponential moving average of weights (and BN running statistics)."""

    decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9999
    """Target decay (official: 0.9999)."""
    num_updates_warmup: bool = True
    """TF ExponentialMovingAverage(num_updates): effective decay min(decay, (1 + t) / (10 + t))."""


class BatchNormTraining(SpecModel):
    """What a train-mode batch norm normalises with, stated so that it never depends on the number of
    processes or devices that run the step (plain DDP, jit on a sharded batch and TPU pods differ)."""

    mode: Literal["batch", "frozen"] = "batch"
    """'batch': batch statistics per group (below); 'frozen': inference mode while training (running
    statistics used and not updated; gamma and beta still train unless `freeze_affine`), the usual
    way to fine-tune on small data."""
    group_size: Annotated[int, Field(ge=1, le=65536)] | None = None
    """Samples per statistics group: the global batch is cut into contiguous groups of this many
    samples, each normalised with its own mean and variance. null = the whole global batch (SyncBN);
    batch / replicas = plain DDP; 8 x per-core batch = the official TPU recipe. Must divide batch_size."""
    running_stats: Literal["mean_of_groups"] = "mean_of_groups"
    """Running-statistics rule: each group's batch mean and variance (converted by the spec's
    running-variance convention with the group's own count) are averaged over the groups, then one
    momentum update is applied. Every replica computes it with one all-reduce mean, so none drifts."""
    freeze_affine: bool = False
    """With mode 'frozen': also keep gamma and beta fixed (no update, no weight decay)."""


class RandomResizedCrop(SpecModel):
    """The official V2 base train transform: a random box of the stored image, resized to the stage size."""

    area: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]] = (0.05, 1.0)
    """Range of the box's area as a fraction of the image (official V2: 0.05-1; V1: 0.08-1)."""
    aspect: tuple[Annotated[float, Field(gt=0.0, le=100.0)], Annotated[float, Field(gt=0.0, le=100.0)]] = (
        0.75, 4.0 / 3.0)
    """Range of the box's width / height."""

    @model_validator(mode="after")
    def _ordered(self) -> "RandomResizedCrop":
        for name in ("area", "aspect"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: the minimum must not exceed the maximum ({lo} > {hi})")
        return self


class Augmentation(SpecModel):
    """The train-time input pipeline per sample: crop, flip, RandAugment; then mixup / cutmix per group."""

    randaugment: Literal["automl", "torchvision"] = "automl"
    """RandAugment variant: 'automl' (google/automl: 16 ops, strength magnitude/10 of each op's maximum,
    unbounded above 10, absolute pixel constants, fill 128), the scale of the paper's Table 6 and of the
    schedules; 'torchvision' (14 ops, magnitude on torchvision's 0-30 bin scale)."""
    randaugment_reference_size: Annotated[int, Field(ge=8, le=8192)] | None = None
    """How big the automl variant's pixel constants are. null (official): absolute pixels whatever the
    image, translate up to 100 px and cutout half-side 40 px at magnitude 10 (made for 128-380 px ImageNet
    crops; at 32 px, magnitude 5 moves the image 50 px, out of its frame). An integer R: both scale by
    side / R (translate along each axis by that axis' side), so an image of any stage size is moved and cut
    in the proportion an R px image is in automl, and the magnitude alone sets the strength, as the paper's
    Algorithm 1 intends. Only for randaugment 'automl' (torchvision's translate is already relative)."""
    random_resized_crop: RandomResizedCrop | None = RandomResizedCrop()
    """Random box then bilinear resize to the stage size, or null: the whole image is resized."""
    horizontal_flip: bool = True
    """Flip each image left-right with probability 1/2 (off where a flip changes the class, e.g. digits)."""
    mix_group_size: Annotated[int, Field(ge=1, le=65536)] | None = None
    """Mixup / cutmix partners are taken within contiguous groups of this many samples (the group
    reversed, as the official code does per core). null = the BN group size (the whole batch when
    that is null too). Must divide batch_size."""

    @model_validator(mode="after")
    def _reference_size_is_automl(self) -> "Augmentation":
        if self.randaugment_reference_size is not None and self.randaugment != "automl":
            raise ValueError("randaugment_reference_size: applies to randaugment 'automl' only (torchvision's "
                             "translate is already relative to the image); set it to null")
        return self


class TrainingConfig(SpecModel):
    """How to optimise a network: optimiser, lr schedule, regularisation in the loss, EMA."""

    effv2_spec_version: Literal["1.0"] = SPEC_VERSION
    """Spec format version."""
    kind: Literal["training"] = "training"
    """Document kind."""
    name: SafeName = "training"
    """Name of this recipe."""
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 4096
    """Global batch size (official: 4096)."""
    optimizer: Optimizer = RMSProp(type="rmsprop")
    """Optimiser and its conventions."""
    learning_rate: LearningRate = LearningRate()
    """Learning-rate schedule."""
    weight_decay: WeightDecay = WeightDecay()
    """Coupled L2 regularisation (and the roles AdamW's decoupled decay applies to)."""
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    """Targets become y * (1 - s) + s / K."""
    ema: EMA | None = EMA()
    """Weight EMA, or null for none."""
    randaugment_layers: Annotated[int, Field(ge=0, le=16)] = 2
    """RandAugment ops applied per image (official: 2)."""
    gradient_clip_norm: Annotated[float, Field(gt=0.0)] | None = None
    """Clip the global gradient norm to this, or null (official: off)."""
    batch_norm: BatchNormTraining = BatchNormTraining()
    """Batch-norm statistics groups and frozen BN."""
    augmentation: Augmentation = Augmentation()
    """Per-sample train transform and the mix groups."""

    @model_validator(mode="after")
    def _groups_divide_batch(self) -> "TrainingConfig":
        for path, size in (("batch_norm.group_size", self.batch_norm.group_size),
                           ("augmentation.mix_group_size", self.augmentation.mix_group_size)):
            if size is not None and self.batch_size % size:
                raise ValueError(f"{path}: must divide batch_size ({self.batch_size} is not a multiple of {size})")
        return self

    @property
    def mix_group_size(self) -> int:
        """Samples per mix group: the stated one, else the BN group, else the whole batch."""
        return self.augmentation.mix_group_size or self.batch_norm.group_size or self.batch_size


def learning_rate_at(config: TrainingConfig, step: int, steps_per_epoch: float, total_steps: int) -> float:
    """The learning rate for optimisation step `step` (0-based), as the official code computes it.

    Peak = base * batch / reference_batch; warm-up is linear from 0 over warmup_epochs;
    exponential decay counts from step 0 (so the lr drops at the end of warm-up, as in
    google/automl utils.WarmupLearningRateSchedule); cosine spans total_steps.
    """
    lr_cfg = config.learning_rate
    peak = lr_cfg.base * config.batch_size / lr_cfg.reference_batch_size
    decay = lr_cfg.decay
    if decay.type == "exponential":
        exponent = step / (decay.every_epochs * steps_per_epoch)
        if decay.staircase:
            exponent = float(int(exponent))
        lr = peak * decay.factor**exponent
    elif decay.type == "cosine":
        lr = 0.5 * peak * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    else:
        lr = peak
    warmup_steps = int(lr_cfg.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        lr = peak * step / warmup_steps
    return max(lr, lr_cfg.minimum)
