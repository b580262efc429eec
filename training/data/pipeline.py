"""From stored uint8 images to the network's input, for evaluation and for one training step.

Training, per sample (google/automl's order, efficientnetv2/preprocessing.py): random-resized
crop drawn on the original image (or the whole image) resized bilinearly to the stage size, to
uint8; horizontal flip with probability 1/2; RandAugment at the stage's magnitude on the uint8
image. Then per batch: normalisation by the spec (only when the model does not normalise
itself), NCHW, and mixup / cutmix inside each mix group.

Every random choice of sample row r at step k comes from the plan's generators keyed by
(seed, purpose, k, r), so `prepare_rows` may be called for any contiguous run of rows, by any
worker, in any order, and `assemble` gives the same batch.

In a process that has loaded Numba (the oracle's), `prepare_rows` applies the automl RandAugment of all
its rows in one kernel call (kernels/data/randaugment.py, bit for bit the NumPy ops, from the same draws);
elsewhere (the framework trainers, which never import Numba) the NumPy ops run image by image.
"""

from __future__ import annotations

import numpy as np

from effv2_spec.resolve import ResolvedModel
from effv2_spec.training import Augmentation

from ..kernel_gate import data_kernel
from .crop import horizontal_flip, random_resized_crop, resize_to_uint8, sample_crop_box
from .mixup import one_hot
from .randaugment_automl import draw_layers, randaugment_image
from .resize import resize_bilinear
from ..plan import PURPOSE_AUGMENT, PURPOSE_MIX


def normalise(images: np.ndarray, resolved: ResolvedModel, dtype=np.float32) -> np.ndarray:
    """uint8 (or float) NHWC at the final size -> float NCHW, normalised unless the model does it."""
    # NCHW first, while the pixels are still small: the arithmetic is element-wise, so the layout
    # changes no value, and the per-channel constants then broadcast over contiguous planes
    x = images.transpose(0, 3, 1, 2).astype(dtype, order="C")
    if not resolved.normalize_in_model:  # in place: the same float ops as (x - mean) / std, no temporaries
        norm = resolved.spec.input.normalization
        x -= np.asarray(norm.mean, dtype=dtype)[:, None, None]
        x /= np.asarray(norm.std, dtype=dtype)[:, None, None]
    return x


def to_input(images: np.ndarray, size: int, resolved: ResolvedModel, dtype=np.float32) -> np.ndarray:
    """Evaluation input: uint8 NHWC -> float NCHW at size x size (bilinear, not rounded), normalised."""
    x = images.astype(dtype)
    if x.shape[1] != size or x.shape[2] != size:
        x = resize_bilinear(x, size, channels_last=True)
    return normalise(x, resolved, dtype)


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (..., H, W, C) -> (..., size, size, C), rounded; a batch in one call gives each image's own result
    (the matmul runs image by image and channel by channel, so batching changes no rounding)."""
    if images.shape[-3] == size and images.shape[-2] == size:
        return images
    out = resize_bilinear(images.astype(np.float32), size, channels_last=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def prepare_image(image: np.ndarray, *, size: int, augmentation: Augmentation, randaugment_layers: int,
                  magnitude: float, rng: np.random.Generator) -> np.ndarray:
    """One training image: crop/resize to `size`, flip, RandAugment; uint8 HWC in and out."""
    if augmentation.random_resized_crop is not None:
        img = _random_crop(image, size, augmentation, rng)
    else:
        img = _resize_uint8(image, size)
    return _flip_and_augment(img, augmentation=augmentation, randaugment_layers=randaugment_layers,
                             magnitude=magnitude, rng=rng)


def _random_crop(image: np.ndarray, size: int, augmentation: Augmentation, rng: np.random.Generator) -> np.ndarray:
    crop = augmentation.random_resized_crop
    return random_resized_crop(image, size, rng, area=crop.area, aspect=crop.aspect)


def _draws_flip(augmentation: Augmentation, rng: np.random.Generator) -> bool:
    return bool(augmentation.horizontal_flip and rng.random() < 0.5)


def _augments(randaugment_layers: int, magnitude: float) -> bool:
    return randaugment_layers > 0 and magnitude > 0


def _flip_and_augment(img: np.ndarray, *, augmentation: Augmentation, randaugment_layers: int, magnitude: float,
                      rng: np.random.Generator) -> np.ndarray:
    if _draws_flip(augmentation, rng):
        img = horizontal_flip(img)
    if _augments(randaugment_layers, magnitude):
        img = randaugment_image(img, randaugment_layers, magnitude, rng, variant=augmentation.randaugment,
                                reference_size=augmentation.randaugment_reference_size)
    return img


def _flip_and_augment_rows(images: np.ndarray, rngs: list[np.random.Generator], *, augmentation: Augmentation,
                           randaugment_layers: int, magnitude: float) -> np.ndarray:
    """`_flip_and_augment` of every row (uint8 NHWC, row r with rngs[r]): one kernel call for the automl
    RandAugment once Numba is loaded, else image by image."""
    kernel = None
    if augmentation.randaugment == "automl" and _augments(randaugment_layers, magnitude):
        kernel = _randaugment_rows_kernel()
    if kernel is None:
        return np.stack([_flip_and_augment(img, rng=rng, augmentation=augmentation,
                                           randaugment_layers=randaugment_layers, magnitude=magnitude)
                         for img, rng in zip(images, rngs)])
    h, w = images.shape[1:3]
    flips, drawn = [], []
    for rng in rngs:  # each row's draws in _flip_and_augment's order: the flip, then the ops
        flips.append(_draws_flip(augmentation, rng))
        drawn.append(draw_layers(randaugment_layers, magnitude, h, w, rng, augmentation.randaugment_reference_size))
    return kernel(images, flips, drawn)


def _randaugment_rows_kernel():
    """kernels.data.randaugment.randaugment_rows once Numba is loaded in this process, else None (the pipeline
    never loads it)."""
    return data_kernel("kernels.data.randaugment", "randaugment_rows")


def eval_input(source, lo: int, hi: int, size: int, resolved: ResolvedModel, dtype=np.float32) -> np.ndarray:
    """Evaluation input of rows lo:hi of a source: in-memory pixels resized bilinearly as `to_input` does;
    image files through the spec's `eval_preprocessing`, as `effv2 eval` reads them."""
    images = getattr(source, "images", None)
    if images is not None:
        return to_input(images[lo:hi], size, resolved, dtype)
    how = resolved.spec.input.eval_preprocessing
    return normalise(np.stack([source.eval_pixels(i, size, how) for i in range(lo, hi)]), resolved, dtype)


def crop_row(source, i: int, size: int, augmentation: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """The random-resized crop of row i: the box drawn on the original's size, the box's pixels (decoded at
    a reduced scale when the source can), resized to size x size; uint8 HWC."""
    crop = augmentation.random_resized_crop
    h, w = source.image_size(i)
    box = sample_crop_box(h, w, rng, area=crop.area, aspect=crop.aspect)
    return resize_to_uint8(source.crop(i, box, size), size)


class StepData:
    """The data side of a plan: `prepare_rows` (per-sample, parallelisable) and `assemble` (per group).

    `source` (sources.Source) is the whole training set; the plan says which rows of a step come
    from where and keys every draw. Pickled into a loader worker, it carries a description of the
    source, not its images.
    """

    #: the whole training set resized to a stage's size is kept when it takes at most this many bytes
    RESIZED_CACHE_BYTES = 64 << 20

    def __init__(self, plan, source):
        self.plan, self.source, self.labels = plan, source, source.labels
        self.config = plan.config
        self._resized: tuple[int, np.ndarray] | None = None  # (size, every image resized to it)

    def __getstate__(self):  # loader workers build their own cache
        return {**self.__dict__, "_resized": None}

    def _resized_rows(self, indices: np.ndarray, size: int) -> np.ndarray:
        """The whole-image resize of rows `indices` to `size`. A small in-memory training set is resized once
        per size (a step would otherwise resize the same few thousand images again and again): each image's
        resize is its own computation, whatever else is in the call (`_resize_uint8`), so the bits are the same."""
        images = getattr(self.source, "images", None)
        if images is None:  # files: each image has its own size
            return np.stack([_resize_uint8(self.source.image(i), size) for i in indices])
        n, h, w, c = images.shape
        if (h, w) == (size, size) or n * size * size * c > self.RESIZED_CACHE_BYTES:
            return _resize_uint8(images[indices], size)
        if self._resized is None or self._resized[0] != size:
            self._resized = (size, _resize_uint8(images, size))
        return self._resized[1][indices]

    def prepare_rows(self, step: int, rows: slice) -> np.ndarray:
        """uint8 (rows, size, size, C): the augmented images of rows `rows` of step `step`."""
        plan = self.plan
        stage = plan.stage_at(step)
        indices = plan.batch_indices(step)
        magnitude = float(stage.regularizers.get("randaugment_magnitude", 0.0))
        start, stop, _ = rows.indices(plan.batch_size)
        augmentation, layers = self.config.augmentation, self.config.randaugment_layers
        options = dict(augmentation=augmentation, randaugment_layers=layers, magnitude=magnitude)
        if augmentation.random_resized_crop is not None:
            # each row's crop draws come first from its generator, then its flip and RandAugment draws
            rngs = plan.sample_rngs(PURPOSE_AUGMENT, step, range(start, stop))
            crops = np.stack([crop_row(self.source, int(indices[r]), stage.image_size, augmentation, rng)
                              for r, rng in zip(range(start, stop), rngs)])
            return _flip_and_augment_rows(crops, rngs, **options)
        # the whole-image resize draws nothing: all the rows at once, then each row's own draws, if any
        resized = self._resized_rows(indices[start:stop], stage.image_size)
        if not augmentation.horizontal_flip and not _augments(layers, magnitude):
            return resized
        rngs = plan.sample_rngs(PURPOSE_AUGMENT, step, range(start, stop))
        return _flip_and_augment_rows(resized, rngs, **options)

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
        rngs = plan.sample_rngs(PURPOSE_MIX, step, range(start, stop))
        for lo in range(0, stop - start, g):
            hi = lo + g
            x[lo:hi], targets[lo:hi] = mix_group(x[lo:hi], targets[lo:hi], mixup_alpha=mixup_alpha,
                                                 cutmix_alpha=cutmix_alpha, rngs=rngs[lo:hi])
        return x, targets

    def batch(self, step: int, rows: slice, resolved: ResolvedModel, dtype=np.float32):
        """`assemble(prepare_rows(...))` in one call (one process)."""
        return self.assemble(step, rows, self.prepare_rows(step, rows), resolved, dtype)
