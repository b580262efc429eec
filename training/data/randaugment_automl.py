"""RandAugment as the EfficientNetV2 authors ran it: google/automl efficientnetv2/autoaugment.py.

`distort_image_with_randaugment(image, num_layers, magnitude)`: `num_layers` times, one of the 16
ops below is drawn uniformly and always applied (the per-op `prob` drawn there is never used), at
level `magnitude`. `level_to_arg` turns the level into each op's argument as (level / 10) * max
with NO cap, so magnitudes above 10 (Table 6 schedules go to 15-25) extrapolate: rotate 30 deg at 10
and 45 at 15, translate 100 px and cutout half-side 40 px (absolute pixels, not a fraction of the
image), enhance factor level / 10 * 1.8 + 0.1, posterize int(level / 10 * 4) bits, solarize
threshold int(level / 10 * 256), solarize-add int(level / 10 * 110); rotate, shear and translate
are negated with probability 1/2. Empty pixels of geometric ops and cutout are 128.

The one departure, opt-in (`augmentation.randaugment_reference_size` = R in the training config): translate
and cutout scaled by the image side / R. automl's absolute pixels were made for 128-380 px crops; on the
16-64 px images of a CPU run, magnitude 5 translates the whole image out of its frame and cuts out most of
it, so the small stages of a progressive run got the strongest geometric distortion instead of the weakest.

The TF ops are reproduced with their quirks, because they define what the published models saw:
  * TF casts a Python int to the image's uint8 dtype (wrapping modulo 256, google-research/
    big_vision#110) and its shift kernels clamp the shift to [0, 7] (tensorflow cwise_ops.h):
    solarize's threshold is taken modulo 256 (level 10 -> 256 -> 0: the whole image inverted),
    posterize's shift 8 - bits wraps then clamps (bits 0 or >= 9 -> shift 7, only the top bit kept;
    bits 8 -> identity). So posterize and solarize are not monotone in the magnitude.
  * Contrast blends with a constant H * W / 256 (automl's `mean` sums the histogram, i.e. counts
    pixels: tensorflow/tpu#1057), clipped to 255, not the mean grey level.
  * Grey levels are tf.image.rgb_to_grayscale on uint8: weights (0.2989, 0.5870, 0.1140) on x / 255,
    back to uint8 as trunc(g * 255.5) (convert_image_dtype). Not PIL's rounded 'L' conversion.
  * float -> uint8 casts truncate; `blend` clips only when extrapolating (factor outside (0, 1)).
  * Geometric ops are tfa.image.transform, nearest neighbour: output pixel (x, y) reads the input
    at round-half-away((a0 x + a1 y + a2), (b0 x + b1 y + b2)) in float32, empty when outside.
Float arithmetic is float32, summed in a fixed order; TF's kernels may sum in another order, so a
truncated value can differ by 1 where the float32 sum lands within an ulp of an integer.

Images are uint8 (H, W, 3), or (H, W, 1) which is treated as a grey RGB image. Every random draw
comes from the `np.random.Generator` passed in, in this order per layer: op index, then the sign
(signed ops), then cutout's centre row and column (`draw_layers`). No Numba here: the torch and JAX
trainers call it. kernels/data/randaugment.py applies the same drawn ops to all the rows of a training step
at once (the oracle's pipeline, once Numba is loaded) from the values worked out here: each pointwise
op's table of 256 levels (`pointwise_table`), the transform coefficients (`affine`), the blend mode,
cutout's box, and the constants below.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .randaugment import randaugment as _torchvision_randaugment
from .randaugment_constants import (BLEND_CLIPPED, BLEND_FIRST, BLEND_INSIDE, BLEND_SECOND, FILL, GREY_SCALE,
                                    GREY_WEIGHTS, INV_255)
from .randaugment_constants import SMOOTH_CENTRE as _SMOOTH_CENTRE, SMOOTH_EDGE as _SMOOTH_EDGE

MAX_LEVEL = 10.0
CUTOUT_CONST = 40
TRANSLATE_CONST = 100
OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
            "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")
SIGNED = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})
GEOMETRIC = SIGNED  # the ops that are a tfa.image.transform (`affine`)
POINTWISE = frozenset({"Invert", "Posterize", "Solarize", "SolarizeAdd", "Contrast", "Brightness"})
"""The ops whose output pixel depends on that input pixel only, the same way in every channel."""
VARIANTS = ("automl", "torchvision")

_F32 = np.float32


# ---- helpers that reproduce TF's casts --------------------------------------------------------
def _cast_uint8(x: np.ndarray) -> np.ndarray:
    """tf.cast(float -> uint8) for values already in [0, 256): truncation toward zero."""
    return x.astype(np.uint8)


def _as_tf_uint8(value: int) -> int:
    """A Python int converted to a uint8 tensor, as TF does for `image < value` etc.: modulo 256."""
    return int(value) % 256


def blend_mode(factor: float) -> int:
    """BLEND_FIRST (factor 0), BLEND_SECOND (1), BLEND_INSIDE (in (0, 1): no clip) or BLEND_CLIPPED."""
    if factor == 0.0:
        return BLEND_FIRST
    if factor == 1.0:
        return BLEND_SECOND
    return BLEND_INSIDE if 0.0 < factor < 1.0 else BLEND_CLIPPED


def blend(image1: np.ndarray, image2: np.ndarray, factor: float) -> np.ndarray:
    """autoaugment.blend: image1 + factor * (image2 - image1) in float32; 0 -> image1, 1 -> image2.

    Inside (0, 1) the result is cast (truncated) directly; outside it is clipped to [0, 255] first.
    """
    shape = np.broadcast_shapes(image1.shape, image2.shape)
    mode = blend_mode(factor)
    if mode == BLEND_FIRST:
        return np.broadcast_to(image1, shape).astype(np.uint8)
    if mode == BLEND_SECOND:
        return np.broadcast_to(image2, shape).astype(np.uint8)
    a = image1.astype(_F32)
    temp = a + _F32(factor) * (image2.astype(_F32) - a)
    if mode == BLEND_CLIPPED:
        np.maximum(temp, _F32(0.0), out=temp)
        np.minimum(temp, _F32(255.0), out=temp)
    return _cast_uint8(temp if temp.shape == shape else np.broadcast_to(temp, shape))


def grayscale(image: np.ndarray) -> np.ndarray:
    """tf.image.rgb_to_grayscale on uint8 (H, W, 3) -> uint8 (H, W, 1)."""
    x = image.astype(_F32) * INV_255
    g = x[..., 0] * GREY_WEIGHTS[0] + x[..., 1] * GREY_WEIGHTS[1] + x[..., 2] * GREY_WEIGHTS[2]
    return _cast_uint8(g * GREY_SCALE)[..., None]


# ---- the 16 ops, with their arguments already converted from the level -------------------------
def _planes(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> contiguous (C, H * W): per-channel reductions and broadcasts run fast on whole rows."""
    h, w, c = image.shape
    return np.ascontiguousarray(image.transpose(2, 0, 1)).reshape(c, h * w)


def _unplanes(planes: np.ndarray, shape) -> np.ndarray:
    h, w, c = shape
    return np.ascontiguousarray(planes.reshape(c, h, w).transpose(1, 2, 0))


def autocontrast(image: np.ndarray) -> np.ndarray:
    """Per channel: lo -> 0, hi -> 255 linearly (float32, clipped, truncated); flat channels kept.

    All channels in one pass: each channel's float32 scale and offset broadcast along its row, so every
    pixel sees the float32 operations a channel-by-channel loop applies.
    """
    planes = _planes(image)
    lo = planes.min(axis=1).astype(_F32)
    hi = planes.max(axis=1).astype(_F32)
    spread = hi > lo
    scale = _F32(255.0) / np.where(spread, hi - lo, _F32(1.0))
    offset = -lo * scale
    stretched = planes.astype(_F32) * scale[:, None] + offset[:, None]
    np.maximum(stretched, _F32(0.0), out=stretched)
    np.minimum(stretched, _F32(255.0), out=stretched)
    return _unplanes(np.where(spread[:, None], _cast_uint8(stretched), planes), image.shape)


def equalize(image: np.ndarray) -> np.ndarray:
    """PIL's equalize per channel (the automl port is exact integer arithmetic, as PIL).

    Every channel's histogram, step and look-up table at once (integers: exactly the values of a
    channel-by-channel loop); a channel whose step is 0 keeps its pixels.
    """
    planes = _planes(image)
    channels, pixels = planes.shape
    levels = planes + np.arange(0, 256 * channels, 256)[:, None]  # channel c's grey g -> 256 c + g
    hist = np.bincount(levels.ravel(), minlength=256 * channels).reshape(channels, 256)
    last = 255 - np.argmax(hist[:, ::-1] > 0, axis=1)  # the largest grey level present
    step = (pixels - hist[np.arange(channels), last]) // 255
    kept = step == 0
    step = np.where(kept, 1, step)[:, None]
    lut = np.empty_like(hist)
    lut[:, 0] = 0
    np.cumsum(hist[:, :-1], axis=1, out=lut[:, 1:])
    lut[:, 1:] += step // 2
    lut //= step
    np.minimum(lut, 255, out=lut)
    lut[kept] = np.arange(256)
    return _unplanes(lut.astype(np.uint8).ravel()[levels], image.shape)


def invert(image: np.ndarray) -> np.ndarray:
    return (255 - image).astype(np.uint8)


def posterize_shift(bits: int) -> int:
    """8 - bits taken modulo 256 (uint8) and clamped to <= 7, as TF does."""
    return min(_as_tf_uint8(8 - int(bits)), 7)


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    """(x >> s) << s with s = posterize_shift(bits)."""
    shift = posterize_shift(bits)
    return ((image >> np.uint8(shift)) << np.uint8(shift)).astype(np.uint8)


def solarize(image: np.ndarray, threshold: int) -> np.ndarray:
    """Pixels below threshold (taken modulo 256) kept, the others inverted."""
    t = _as_tf_uint8(threshold)
    return np.where(image < t, image, 255 - image).astype(np.uint8)


def solarize_add(image: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
    """Pixels below threshold get `addition` added (int64, clipped to [0, 255]); others kept."""
    added = np.clip(image.astype(np.int64) + int(addition), 0, 255).astype(np.uint8)
    return np.where(image < _as_tf_uint8(threshold), added, image).astype(np.uint8)


def color(image: np.ndarray, factor: float) -> np.ndarray:
    # blend broadcasts the grey channel: the same values as blending with it repeated 3 times
    return blend(grayscale(image), image, factor)


def contrast_level(h: int, w: int) -> int:
    """trunc(min(H * W / 256, 255)) in float32: automl's `mean` (see module docstring)."""
    mean = _F32(h * w) / _F32(256.0)
    return int(_cast_uint8(np.clip(mean, _F32(0.0), _F32(255.0))))


def _blend_constant(level: int, image: np.ndarray, factor: float) -> np.ndarray:
    return blend(np.full((1, 1, 1), level, np.uint8), image, factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the constant contrast_level(H, W)."""
    return _blend_constant(contrast_level(*image.shape[:2]), image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return _blend_constant(0, image, factor)


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with PIL's SMOOTH ([[1,1,1],[1,5,1],[1,1,1]] / 13, VALID, truncated); border pixels kept.

    The kernel holds TF's float32 weights (each slightly above k / 13); the 9 products are summed in
    float64, not float32: a float32 sum can land an ulp below an integer (on a flat image of 3, 6, 9,
    ...) and truncate one level down, which depends on the summation order of TF's conv kernel.
    In float64 every product (8-bit pixel times 24-bit weight) and every partial sum (a multiple of
    2**-27 below 2**8) is exact, so the sum does not depend on its order: it is computed as
    (sum of the 8 neighbours, an integer) * w_edge + centre * w_centre.
    """
    h, w = image.shape[:2]
    degenerate = image.copy()
    if h > 2 and w > 2:
        x = image.astype(np.int32)
        rows = x[:-2] + x[1:-1] + x[2:]
        box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
        centre = x[1:-1, 1:-1]
        acc = (box - centre) * _SMOOTH_EDGE + centre * _SMOOTH_CENTRE
        degenerate[1:-1, 1:-1] = _cast_uint8(np.minimum(acc, 255.0))  # acc >= 0: the low clip is moot
    return blend(degenerate, image, factor)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """std::round (half away from zero) of float32 values, exactly, as float32 integers.

    v - trunc(v) is exact in float32 (the two share their leading bits) and so is doubling it; the
    doubled fraction truncates to -1, 0 or 1 exactly when the fraction reaches a half away from zero.
    """
    t = np.trunc(v)
    f = v - t
    return t + np.trunc(f + f)


@lru_cache(maxsize=32)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) float32 pixel coordinates, each (1, h, w), read-only: every call of a run sees the same few sizes."""
    ys, xs = np.mgrid[0:h, 0:w].astype(_F32)
    xs, ys = xs[None], ys[None]
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def transform(image: np.ndarray, a0, a1, a2, b0, b1, b2) -> np.ndarray:
    """tfa.image.transform(wrap(image), [a0, a1, a2, b0, b1, b2, 0, 0]) then unwrap(replace=128).

    Output pixel (x, y) = input at (round(a0 x + a1 y + a2), round(b0 x + b1 y + b2)), float32,
    nearest neighbour; 128 where that falls outside the image.
    """
    h, w = image.shape[:2]
    xs, ys = _pixel_grid(h, w)
    a = np.array([[a0, a1, a2], [b0, b1, b2]], _F32)[:, :, None, None]  # each rounded to float32 first
    # both source coordinates at once, each in the float32 order (a0 x + a1 y) + a2
    src = _round_half_away(a[:, 0] * xs + a[:, 1] * ys + a[:, 2])
    # a one-pixel border of FILL around the image: every outside coordinate clips onto it (fmax / fmin
    # also send a NaN there, where the float -> int cast of the original semantics lands outside too)
    src += _F32(1.0)
    np.fmax(src, _F32(0.0), out=src)
    np.fmin(src, _border_limits(h, w), out=src)
    col, row = src.astype(np.intp)
    padded = np.full((h + 2, w + 2) + image.shape[2:], FILL, image.dtype)
    padded[1:-1, 1:-1] = image
    flat = padded.reshape((h + 2) * (w + 2), -1)
    return flat.take((row * (w + 2) + col).ravel(), axis=0).reshape(image.shape)


@lru_cache(maxsize=32)
def _border_limits(h: int, w: int) -> np.ndarray:
    """Largest padded column and row index, shaped to clip the stacked (x, y) source coordinates."""
    lim = np.array([w + 1, h + 1], _F32)[:, None, None]
    lim.setflags(write=False)
    return lim


def affine(name: str, arg: float, h: int, w: int) -> tuple:
    """The transform coefficients (a0, a1, a2, b0, b1, b2) of geometric op `name` with `arg` on an h x w image."""
    if name == "Rotate":
        rad = _F32(arg) * _F32(math.pi / 180.0)
        cos, sin = np.cos(rad, dtype=_F32), np.sin(rad, dtype=_F32)
        wm1, hm1 = _F32(w - 1), _F32(h - 1)
        x_off = (wm1 - (cos * wm1 - sin * hm1)) / _F32(2.0)
        y_off = (hm1 - (sin * wm1 + cos * hm1)) / _F32(2.0)
        return cos, -sin, x_off, sin, cos, y_off
    if name == "ShearX":
        return 1.0, arg, 0.0, 0.0, 1.0, 0.0
    if name == "ShearY":
        return 1.0, 0.0, 0.0, arg, 1.0, 0.0
    if name == "TranslateX":
        return 1.0, 0.0, arg, 0.0, 1.0, 0.0
    if name == "TranslateY":
        return 1.0, 0.0, 0.0, 0.0, 1.0, arg
    raise KeyError(f"{name!r} is not a geometric op; those are {', '.join(sorted(GEOMETRIC))}")


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """tfa.image.rotate by `degrees` (counterclockwise on screen for degrees > 0) about the centre."""
    return transform(image, *affine("Rotate", degrees, *image.shape[:2]))


def shear_x(image: np.ndarray, level: float) -> np.ndarray:
    """Output (x, y) reads input (x + level * y, y)."""
    return transform(image, *affine("ShearX", level, *image.shape[:2]))


def shear_y(image: np.ndarray, level: float) -> np.ndarray:
    """Output (x, y) reads input (x, level * x + y)."""
    return transform(image, *affine("ShearY", level, *image.shape[:2]))


def translate_x(image: np.ndarray, pixels: float) -> np.ndarray:
    """Output (x, y) reads input (x + pixels, y): content moves left by `pixels` (automl negates)."""
    return transform(image, *affine("TranslateX", pixels, *image.shape[:2]))


def translate_y(image: np.ndarray, pixels: float) -> np.ndarray:
    """Output (x, y) reads input (x, y + pixels): content moves up by `pixels`."""
    return transform(image, *affine("TranslateY", pixels, *image.shape[:2]))


def cutout_box(pad_size: int, centre: tuple[int, int], h: int, w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom and right exclusive: cutout's square clipped to the image."""
    cy, cx = centre
    return max(0, cy - pad_size), min(h, cy + pad_size), max(0, cx - pad_size), min(w, cx + pad_size)


def cutout(image: np.ndarray, pad_size: int, centre: tuple[int, int]) -> np.ndarray:
    """Rows [cy - pad, cy + pad) x columns [cx - pad, cx + pad), clipped to the image, set to 128."""
    top, bottom, left, right = cutout_box(pad_size, centre, *image.shape[:2])
    out = image.copy()
    out[top:bottom, left:right] = FILL
    return out


# ---- level -> argument (automl level_to_arg) and the policy ----------------------------------
def pixel_scales(h: int, w: int, reference_size: int | None) -> tuple[float, float] | None:
    """(rows, columns) factors of the translate and cutout constants for an h x w image: None for automl's
    absolute pixels, else (h / R, w / R) (training config `augmentation.randaugment_reference_size` = R)."""
    if reference_size is None:
        return None
    return h / reference_size, w / reference_size


def level_to_arg(name: str, magnitude: float, rng: np.random.Generator | None = None, sign: float | None = None,
                 scales: tuple[float, float] | None = None):
    """The argument of op `name` at `magnitude` (no cap). Signed ops take `sign` or draw it from `rng`.
    `scales` (`pixel_scales`) makes translate and cutout relative to the image; None keeps automl's pixels."""
    m = float(magnitude) / MAX_LEVEL
    if name in SIGNED and sign is None:
        sign = -1.0 if rng.random() < 0.5 else 1.0  # automl keeps the sign iff floor(u + 0.5) == 1
    if name == "Rotate":
        return sign * m * 30.0
    if name in ("ShearX", "ShearY"):
        return sign * m * 0.3
    if name in ("TranslateX", "TranslateY"):
        if scales is not None:  # the shift runs along columns for X, along rows for Y
            return sign * m * float(TRANSLATE_CONST) * (scales[1] if name == "TranslateX" else scales[0])
        return sign * m * float(TRANSLATE_CONST)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return m * 1.8 + 0.1
    if name == "Posterize":
        return int(m * 4)
    if name == "Solarize":
        return int(m * 256)
    if name == "SolarizeAdd":
        return int(m * 110)
    if name == "Cutout":
        if scales is not None:
            return int(m * CUTOUT_CONST * min(scales))
        return int(m * CUTOUT_CONST)
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    raise KeyError(f"unknown RandAugment op {name!r}; available: {', '.join(OP_NAMES)}")


_FUNCS = {
    "AutoContrast": lambda im, a: autocontrast(im), "Equalize": lambda im, a: equalize(im),
    "Invert": lambda im, a: invert(im), "Rotate": rotate, "Posterize": posterize, "Solarize": solarize,
    "Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness,
    "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x, "TranslateY": translate_y,
    "SolarizeAdd": solarize_add,
}


@lru_cache(maxsize=256)
def pointwise_table(name: str, arg, h: int, w: int) -> np.ndarray:
    """uint8 (256,), read-only: what POINTWISE op `name` with `arg` makes of each grey level of an h x w image.

    The op itself run on the 256 levels (all its arithmetic is per pixel), so looking pixels up in the
    table gives its output exactly. Only Contrast depends on the image size.
    """
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    if name == "Contrast":
        table = _blend_constant(contrast_level(h, w), levels, arg)
    elif name in POINTWISE:
        table = _FUNCS[name](levels, arg)
    else:
        raise KeyError(f"{name!r} is not a pointwise op; those are {', '.join(sorted(POINTWISE))}")
    table = np.ascontiguousarray(table).reshape(256)
    table.setflags(write=False)
    return table


def _as_rgb(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"randaugment: expected a uint8 (H, W, 1|3) image, got {img.dtype} {img.shape}")
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def draw_argument(name: str, magnitude: float, h: int, w: int, rng: np.random.Generator | None = None,
                  sign: float | None = None, reference_size: int | None = None):
    """Op `name`'s argument at `magnitude` on an h x w image: `level_to_arg`'s, for Cutout (half-side,
    (centre row, centre column)); the sign (signed ops, unless given) then the centre drawn from `rng`.
    `reference_size`: see `pixel_scales` (None: automl's absolute pixels)."""
    arg = level_to_arg(name, magnitude, rng, sign, pixel_scales(h, w, reference_size))
    if name == "Cutout":
        return arg, (int(rng.integers(h)), int(rng.integers(w)))
    return arg


def draw_layers(layers: int, magnitude: float, h: int, w: int, rng: np.random.Generator,
                reference_size: int | None = None) -> list[tuple[str, object]]:
    """What `randaugment` does to an h x w image: (op name, `draw_argument`) per layer, in the draw order."""
    if magnitude < 0:
        raise ValueError(f"randaugment: magnitude must be >= 0, got {magnitude}")
    drawn = []
    for _ in range(int(layers)):
        name = OP_NAMES[int(rng.integers(len(OP_NAMES)))]
        drawn.append((name, draw_argument(name, magnitude, h, w, rng, reference_size=reference_size)))
    return drawn


def _apply(name: str, img: np.ndarray, arg) -> np.ndarray:
    """Op `name` with its drawn argument on a uint8 (H, W, 1|3) image (a grey one as grey RGB)."""
    rgb = _as_rgb(img)
    out = cutout(rgb, *arg) if name == "Cutout" else _FUNCS[name](rgb, arg)
    return out[..., :1].copy() if img.shape[2] == 1 else out


def apply_op(name: str, img: np.ndarray, magnitude: float, rng: np.random.Generator | None = None,
             sign: float | None = None) -> np.ndarray:
    """Op `name` at `magnitude` on a uint8 (H, W, 1|3) image; randomness (sign, cutout centre) from `rng`."""
    _as_rgb(img)
    return _apply(name, img, draw_argument(name, magnitude, img.shape[0], img.shape[1], rng, sign))


def randaugment(img: np.ndarray, layers: int, magnitude: float, rng: np.random.Generator,
                reference_size: int | None = None) -> np.ndarray:
    """automl distort_image_with_randaugment: `layers` ops drawn uniformly from the 16, always applied
    (`reference_size`: see `pixel_scales`)."""
    _as_rgb(img)
    return apply_layers(img, draw_layers(layers, magnitude, img.shape[0], img.shape[1], rng, reference_size))


def apply_layers(img: np.ndarray, drawn: list[tuple[str, object]]) -> np.ndarray:
    """The ops `draw_layers` drew, applied in order to a uint8 (H, W, 1|3) image."""
    out = img
    for name, arg in drawn:
        out = _apply(name, out, arg)
    return out


def randaugment_image(img: np.ndarray, layers: int, magnitude: float, rng: np.random.Generator,
                      variant: str = "automl", reference_size: int | None = None) -> np.ndarray:
    """RandAugment one uint8 (H, W, C) image: `variant` 'automl' (this module, magnitude on the official
    open-ended scale, 10 = each op's reference maximum) or 'torchvision' (effv2_train.data.randaugment,
    magnitude on torchvision's 0..30 bins)."""
    if variant == "automl":
        return randaugment(img, layers, magnitude, rng, reference_size)
    if variant == "torchvision":
        return _torchvision_randaugment(img, int(layers), magnitude, rng)
    raise ValueError(f"randaugment: unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
