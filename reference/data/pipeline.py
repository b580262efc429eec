"""From stored uint8 images to the network's input: augment, resize, normalise, NCHW.

Order per training batch: RandAugment on the stored uint8 images (the ops are defined on
uint8 pixels), bilinear resize to the stage's size, normalisation by the spec, NCHW, then
mixup (on the normalised floats, as the official code mixes the preprocessed batch).
Normalisation happens here only when the spec keeps it outside the model
(`input.normalization.in_model` false); otherwise the model gets 0..255 floats.
"""

from __future__ import annotations

import numpy as np

from effv2_spec.resolve import ResolvedModel

from ..ops.resize import resize_bilinear
from .mixup import mixup
from .randaugment import randaugment_batch


def to_input(images: np.ndarray, size: int, resolved: ResolvedModel, dtype=np.float32) -> np.ndarray:
    """uint8 NHWC -> float NCHW at size x size, normalised unless the model normalises itself."""
    x = images.astype(dtype)
    if x.shape[1] != size or x.shape[2] != size:
        x = resize_bilinear(x, size, channels_last=True)
    if not resolved.normalize_in_model:
        norm = resolved.spec.input.normalization
        x = (x - np.asarray(norm.mean, dtype=dtype)) / np.asarray(norm.std, dtype=dtype)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=dtype)


def training_batch(images: np.ndarray, labels: np.ndarray, *, size: int, resolved: ResolvedModel,
                   randaugment_layers: int, magnitude: float, mixup_alpha: float, rng: np.random.Generator,
                   dtype=np.float32):
    """(x NCHW, soft targets (N, K)) for one step; every random choice comes from `rng`."""
    if randaugment_layers > 0 and magnitude > 0:
        images = randaugment_batch(images, randaugment_layers, magnitude, rng)
    x = to_input(images, size, resolved, dtype)
    x, targets, _ = mixup(x, labels, resolved.num_classes, mixup_alpha, rng)
    return x, targets
