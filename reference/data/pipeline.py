"""From stored uint8 images to the network's input, for evaluation and for one training step.

Training, per sample (google/automl's order, efficientnetv2/preprocessing.py): random-resized
crop of the stored image (or the whole image) resized bilinearly to the stage size, rounded to
uint8; horizontal flip with probability 1/2; RandAugment at the stage's magnitude on the uint8
image. Then per batch: normalisation by the spec (only when the model does not normalise
itself), NCHW, and mixup / cutmix inside each mix group.

Every random choice of sample row r at step k comes from the plan's generators keyed by
(seed, purpose, k, r), so `prepare_rows` may be called for any contiguous run of rows, by any
worker, in any order, and `assemble` gives the same batch.
"""

from __future__ import annotations

import numpy as np

from effv2_spec.resolve import ResolvedModel
from effv2_spec.training import Augmentation

from .resize import resize_bilinear
from ..plan import PURPOSE_AUGMENT, PURPOSE_MIX
from .mixup import one_hot


def normalise(images: np.ndarray, resolved: ResolvedModel, dtype=np.float32) -> np.ndarray:
    """uint8 (or float) NHWC at the final size -> float NCHW, normalised unless the model does it."""
    x = images.astype(dtype)
    if not resolved.normalize_in_model:
        norm = resolved.spec.input.normalization
        x = (x - np.asarray(norm.mean, dtype=dtype)) / np.asarray(norm.std, dtype=dtype)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=dtype)


def to_input(images: np.ndarray, size: int, resolved: ResolvedModel, dtype=np.float32) -> np.ndarray:
    """Evaluation input: uint8 NHWC -> float NCHW at size x size (bilinear, not rounded), normalised."""
    x = images.astype(dtype)
    if x.shape[1] != size or x.shape[2] != size:
        x = resize_bilinear(x, size, channels_last=True)
    return normalise(x, resolved, dtype)


def _resize_uint8(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    out = resize_bilinear(img[None].astype(np.float32), size, channels_last=True)[0]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def prepare_image(image: np.ndarray, *, size: int, augmentation: Augmentation, randaugment_layers: int,
                  magnitude: float, rng: np.random.Generator) -> np.ndarray:
    """One training image: crop/resize to `size`, flip, RandAugment; uint8 HWC in and out."""
    from .crop import horizontal_flip, random_resized_crop  # noqa: E402  (TEMP until the module lands)
    from .randaugment_automl import randaugment_image

    crop = augmentation.random_resized_crop
    if crop is not None:
        img = random_resized_crop(image, size, rng, area=crop.area, aspect=crop.aspect)
    else:
        img = _resize_uint8(image, size)
    if augmentation.horizontal_flip and rng.random() < 0.5:
        img = horizontal_flip(img)
    if randaugment_layers > 0 and magnitude > 0:
        img = randaugment_image(img, randaugment_layers, magnitude, rng, variant=augmentation.randaugment)
    return img


class StepData:
    """The data side of a plan: `prepare_rows` (per-sample, parallelisable) and `assemble` (per group).

    `images` (uint8 NHWC) and `labels` are the whole training set; the plan says which rows of a step
    come from where and keys every draw.
    """

    def __init__(self, plan, images: np.ndarray, labels: np.ndarray):
        self.plan, self.images, self.labels = plan, images, labels
        self.config = plan.config

    def prepare_rows(self, step: int, rows: slice) -> np.ndarray:
        """uint8 (rows, size, size, C): the augmented images of rows `rows` of step `step`."""
        plan = self.plan
        stage = plan.stage_at(step)
        indices = plan.batch_indices(step)
        magnitude = float(stage.regularizers.get("randaugment_magnitude", 0.0))
        start, stop, _ = rows.indices(plan.batch_size)
        return np.stack([
            prepare_image(self.images[indices[r]], size=stage.image_size, augmentation=self.config.augmentation,
                          randaugment_layers=self.config.randaugment_layers, magnitude=magnitude,
                          rng=plan.sample_rng(PURPOSE_AUGMENT, step, r))
            for r in range(start, stop)])

    def assemble(self, step: int, rows: slice, images: np.ndarray, resolved: ResolvedModel, dtype=np.float32):
        """(x NCHW, soft targets (rows, K)) for prepared `images` of `rows`: normalise, then mix per group.

        `rows` must hold whole mix groups (the plan's `shards` guarantees it).
        """
        from .mixing import mix_group

        plan = self.plan
        stage = plan.stage_at(step)
        start, stop, _ = rows.indices(plan.batch_size)
        labels = self.labels[plan.batch_indices(step)[start:stop]]
        x = normalise(images, resolved, dtype)
        targets = one_hot(labels, resolved.num_classes, dtype)
        mixup_alpha = float(stage.regularizers.get("mixup_alpha", 0.0))
        cutmix_alpha = float(stage.regularizers.get("cutmix_alpha", 0.0))
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            return x, targets
        g = plan.mix_group_size
        if start % g or stop % g:
            raise ValueError(f"assemble: rows {start}:{stop} cut a mix group of {g}")
        for a in range(start, stop, g):
            lo, hi = a - start, a - start + g
            rngs = [plan.sample_rng(PURPOSE_MIX, step, r) for r in range(a, a + g)]
            x[lo:hi], targets[lo:hi] = mix_group(x[lo:hi], targets[lo:hi], mixup_alpha=mixup_alpha,
                                                 cutmix_alpha=cutmix_alpha, rngs=rngs)
        return x, targets

    def batch(self, step: int, rows: slice, resolved: ResolvedModel, dtype=np.float32):
        """`assemble(prepare_rows(...))` in one call (one process)."""
        return self.assemble(step, rows, self.prepare_rows(step, rows), resolved, dtype)
