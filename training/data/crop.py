"""The official V2 base train transform: random box, bilinear resize, flip (google/automl
efficientnetv2/preprocessing.py `preprocess_for_train`).

The box is `tf.image.sample_distorted_bounding_box(shape, no boxes, area_range=(0.05, 1.0),
min_object_covered=0, use_image_if_no_bounding_boxes=True)` with the default aspect range
(0.75, 1.33) and 100 attempts, reproduced from TF's kernel (core/kernels/image/
sample_distorted_bounding_box_op.cc, `GenerateRandomCrop` and the attempt loop):

  per attempt: aspect = u * (hi - lo) + lo (width / height, float32); heights from
  lrint(sqrt(min_area / aspect)) to lrint(sqrt(max_area / aspect)), the upper one lowered until
  lrint(h * aspect) <= width and capped at the image height, one drawn uniformly (both ends
  included); width = lrint(h * aspect); one step up (if the area is too small) or down (too big)
  to absorb rounding; the attempt fails if the area or the sides are still out of range. The
  offsets are uniform in [0, H - h) and [0, W - w), TF's exclusive bound, so a box smaller than
  the image never touches its bottom or right edge. With no boxes and min_object_covered = 0 the
  first successful attempt is taken; after `max_attempts` failures the whole image is used.

Then tf.image.resize bilinear (half-pixel centres, no antialias) to size x size, computed as TF's
ResizeBilinear kernel does (core/kernels/image/resize_bilinear_op.cc: float32 source positions
(d + 0.5) * (in / out) - 0.5, then top = tl + (tr - tl) * dx, bottom likewise, top + (bottom - top) * dy),
and preprocess_for_train's clip to [0, 255] and cast to uint8, which truncates. The lerp form
matters here: a weighted sum v * (1 - f) + v * f can land an ulp below v on a flat region and
truncate one level down; the lerp gives v exactly. (Same sampling points as resize_bilinear.) Random draws come
from the generator passed in: per attempt the aspect (float32 uniform), the height, the row
offset, the column offset, in TF's order.

`resize_to_uint8` (the resize, clip and truncation) takes kernels/data/crop.py's Numba pass, bit for bit the
NumPy functions here, in a process where Numba is loaded (kernel_gate.data_kernel); this module never
loads Numba itself.
"""

from __future__ import annotations

import numpy as np

from ..kernel_gate import data_kernel

_F32 = np.float32


def _lrintf(v) -> int:
    """C lrintf: float32 rounded half to even."""
    return int(np.rint(_F32(v)))


def _try_box(height: int, width: int, min_rel: float, max_rel: float, aspect, rng: np.random.Generator):
    """GenerateRandomCrop: (y, x, h, w) or None when the constraints cannot be met for this aspect."""
    if max_rel <= 0 or aspect <= 0 or min_rel > max_rel:
        return None
    min_area = _F32(_F32(min_rel) * _F32(width)) * _F32(height)
    max_area = _F32(_F32(max_rel) * _F32(width)) * _F32(height)
    h = _lrintf(np.sqrt(min_area / aspect))
    max_h = _lrintf(np.sqrt(max_area / aspect))
    if _lrintf(_F32(max_h) * aspect) > width:
        # the largest height whose rounded width still fits (TF works this one out in double)
        max_h = int((width + 0.5 - float(_F32(1e-7))) / float(aspect))
        if _lrintf(_F32(max_h) * aspect) > width:
            max_h -= 1
    max_h = min(max_h, height)
    h = min(h, max_h)
    if h < max_h:
        h += int(rng.integers(max_h - h + 1))
    w = _lrintf(_F32(h) * aspect)
    area = _F32(w * h)
    if area < min_area:
        h += 1
        w = _lrintf(_F32(h) * aspect)
        area = _F32(w * h)
    if area > max_area:
        h -= 1
        w = _lrintf(_F32(h) * aspect)
        area = _F32(w * h)
    if area < min_area or area > max_area or w > width or h > height or w <= 0 or h <= 0:
        return None
    y = int(rng.integers(height - h)) if h < height else 0
    x = int(rng.integers(width - w)) if w < width else 0
    return y, x, h, w


def sample_crop_box(height: int, width: int, rng: np.random.Generator, area=(0.05, 1.0),
                    aspect=(3.0 / 4.0, 4.0 / 3.0), max_attempts: int = 100) -> tuple[int, int, int, int]:
    """(y, x, h, w) of the box, as tf.image.sample_distorted_bounding_box with min_object_covered=0."""
    lo, hi = _F32(aspect[0]), _F32(aspect[1])
    for _ in range(max_attempts):
        a = rng.random(dtype=_F32) * (hi - lo) + lo
        box = _try_box(height, width, area[0], area[1], a, rng)
        if box is not None:  # a box of area >= 1 always "covers" 0 of the (whole-image) object
            return box
    return 0, 0, height, width


def _lerp_weights(in_size: int, out_size: int):
    """TF's compute_interpolation_weights with half-pixel centres: (lower, upper, fraction), float32."""
    scale = _F32(in_size) / _F32(out_size)
    src = (np.arange(out_size, dtype=_F32) + _F32(0.5)) * scale - _F32(0.5)
    floor = np.floor(src)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(src), in_size - 1).astype(np.intp)
    return lower, upper, (src - floor).astype(_F32)


def resize_bilinear_tf(img: np.ndarray, size) -> np.ndarray:
    """tf.image.resize(img, size, 'bilinear') of an (H, W, C) image, float32, as TF computes it."""
    out_h, out_w = (size, size) if np.isscalar(size) else size
    y0, y1, dy = _lerp_weights(img.shape[0], out_h)
    x0, x1, dx = _lerp_weights(img.shape[1], out_w)
    x = img.astype(_F32)
    dx = dx[None, :, None]
    top = x[y0][:, x0] + (x[y0][:, x1] - x[y0][:, x0]) * dx
    bottom = x[y1][:, x0] + (x[y1][:, x1] - x[y1][:, x0]) * dx
    return top + (bottom - top) * dy[:, None, None]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """preprocess_for_train's tf.clip_by_value(0, 255) then tf.cast(uint8): truncation."""
    return np.clip(x, 0.0, 255.0).astype(np.uint8)


def resize_to_uint8(region: np.ndarray, size) -> np.ndarray:
    """uint8 (H, W, C) region -> uint8 (size, size, C): `to_uint8(resize_bilinear_tf(region, size))`, by the
    Numba kernel where Numba is loaded (the same bits)."""
    kernel = data_kernel("kernels.data.crop", "resize_uint8")
    if kernel is not None and region.dtype == np.uint8 and region.ndim == 3:
        return kernel(region, size)
    return to_uint8(resize_bilinear_tf(region, size))


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator, area=(0.05, 1.0),
                        aspect=(3.0 / 4.0, 4.0 / 3.0), max_attempts: int = 100) -> np.ndarray:
    """uint8 (H, W, C) -> uint8 (size, size, C): the sampled box, resized bilinearly, clipped, truncated."""
    y, x, h, w = sample_crop_box(img.shape[0], img.shape[1], rng, area, aspect, max_attempts)
    return resize_to_uint8(img[y:y + h, x:x + w], size)


def horizontal_flip(img: np.ndarray) -> np.ndarray:
    """Left-right flip of an (H, W, C) image (tf.image.random_flip_left_right when it flips)."""
    return np.ascontiguousarray(img[:, ::-1])
