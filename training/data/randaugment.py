"""RandAugment (Cubuk et al. 2019) in NumPy on uint8 HWC images.

Op set and magnitude map are torchvision's `RandAugment` (31 magnitude bins, so M lies on
the 0..30 scale the schedules use; fractional M interpolates): each image gets N ops drawn
uniformly with replacement from the 14 below, each at magnitude M, signed ops with a random
sign. At M = 0 every op with a magnitude is the identity; AutoContrast and Equalize have
none. Geometric ops use nearest-neighbour sampling and fill 0, as torchvision's defaults.
Colour ops follow PIL's ImageEnhance (blend with a degenerate image, then clip).

Everything random comes from the `np.random.Generator` passed in, so a seed fixes the result.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

MAX_MAGNITUDE = 30.0


def _blend(img: np.ndarray, degenerate: np.ndarray, factor: float) -> np.ndarray:
    # PIL Image.blend(degenerate, img, factor): degenerate + factor * (img - degenerate)
    out = degenerate + np.float32(factor) * (img.astype(np.float32) - degenerate)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _gray(img: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma (PIL's 'L'), shaped (H, W, 1) as float32."""
    if img.shape[2] == 1:
        return img.astype(np.float32)
    w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return (img[..., :3].astype(np.float32) @ w)[..., None]


@lru_cache(maxsize=32)
def _centred_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre offsets from the image centre, flattened (x, y); cached, every batch has one size."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return (xs - (w - 1) / 2.0).ravel(), (ys - (h - 1) / 2.0).ravel()


def _affine(img: np.ndarray, a: float, b: float, c: float, d: float, tx: float = 0.0, ty: float = 0.0):
    """Output pixel p takes the input at M (p - centre) + centre - t, M = [[a, b], [c, d]]; fill 0."""
    h, w = img.shape[:2]
    dx, dy = _centred_grid(h, w)
    sx = np.rint(a * dx + b * dy + ((w - 1) / 2.0 - tx)).astype(np.intp)
    sy = np.rint(c * dx + d * dy + ((h - 1) / 2.0 - ty)).astype(np.intp)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    flat = img.reshape(h * w, -1)
    out = np.zeros_like(flat)
    out[inside] = flat[sy[inside] * w + sx[inside]]
    return out.reshape(img.shape)


# ---- the ops: f(img, level, sign) with level in [0, 1] (= M / 30) ------------------------------
def identity(img, level, sign):
    return img


def shear_x(img, level, sign):
    return _affine(img, 1.0, sign * 0.3 * level, 0.0, 1.0)


def shear_y(img, level, sign):
    return _affine(img, 1.0, 0.0, sign * 0.3 * level, 1.0)


def translate_x(img, level, sign):
    # torchvision: 150/331 of the width at the top magnitude
    return _affine(img, 1.0, 0.0, 0.0, 1.0, tx=sign * 150.0 / 331.0 * img.shape[1] * level)


def translate_y(img, level, sign):
    return _affine(img, 1.0, 0.0, 0.0, 1.0, ty=sign * 150.0 / 331.0 * img.shape[0] * level)


def rotate(img, level, sign):
    t = math.radians(sign * 30.0 * level)
    cos, sin = math.cos(t), math.sin(t)
    return _affine(img, cos, -sin, sin, cos)


def brightness(img, level, sign):
    return _blend(img, np.zeros((1, 1, 1), np.float32), 1.0 + sign * 0.9 * level)


def color(img, level, sign):
    return _blend(img, _gray(img), 1.0 + sign * 0.9 * level)


def contrast(img, level, sign):
    mean = np.float32(math.floor(float(_gray(img).mean()) + 0.5))  # PIL rounds the mean luma
    return _blend(img, np.full((1, 1, 1), mean, np.float32), 1.0 + sign * 0.9 * level)


def sharpness(img, level, sign):
    # PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 inside, border pixels kept
    x = img.astype(np.float32)
    blur = x.copy()
    if img.shape[0] > 2 and img.shape[1] > 2:
        acc = sum(x[1 + dy:x.shape[0] - 1 + dy, 1 + dx:x.shape[1] - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        blur[1:-1, 1:-1] = np.rint((acc + 4.0 * x[1:-1, 1:-1]) / 13.0)
    return _blend(img, blur, 1.0 + sign * 0.9 * level)


def posterize(img, level, sign):
    bits = 8 - int(round(4.0 * level))
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    return img & mask


def solarize(img, level, sign):
    threshold = 256.0 * (1.0 - level)  # 256 at M = 0: nothing inverted
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


def autocontrast(img, level, sign):
    out = img.copy()
    for ch in range(img.shape[2]):
        x = img[..., ch]
        lo, hi = int(x.min()), int(x.max())
        if hi > lo:
            out[..., ch] = np.clip(np.rint((x.astype(np.float32) - lo) * (255.0 / (hi - lo))), 0, 255)
    return out


def equalize(img, level, sign):
    # PIL ImageOps.equalize, per channel
    out = img.copy()
    for ch in range(img.shape[2]):
        x = img[..., ch]
        hist = np.bincount(x.ravel(), minlength=256)
        nonzero = hist[hist > 0]
        step = (int(hist.sum()) - int(nonzero[-1])) // 255
        if step == 0:
            continue
        lut = np.clip((np.concatenate([[0], np.cumsum(hist)[:-1]]) + step // 2) // step, 0, 255).astype(np.uint8)
        out[..., ch] = lut[x]
    return out


OPS = {
    "identity": identity, "shear_x": shear_x, "shear_y": shear_y, "translate_x": translate_x,
    "translate_y": translate_y, "rotate": rotate, "brightness": brightness, "color": color,
    "contrast": contrast, "sharpness": sharpness, "posterize": posterize, "solarize": solarize,
    "autocontrast": autocontrast, "equalize": equalize,
}
SIGNED = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                    "contrast", "sharpness"})
_NAMES = tuple(OPS)


def apply_op(name: str, img: np.ndarray, magnitude: float, sign: float = 1.0) -> np.ndarray:
    """One named op at `magnitude` (0..30) on a uint8 (H, W, C) image."""
    if not 0.0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"randaugment: magnitude must lie in [0, {MAX_MAGNITUDE:g}], got {magnitude}")
    return OPS[name](img, magnitude / MAX_MAGNITUDE, sign if name in SIGNED else 1.0)


def randaugment(img: np.ndarray, num_ops: int, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    """`num_ops` ops drawn uniformly (with replacement) at `magnitude`, applied in order."""
    for k in rng.integers(len(_NAMES), size=num_ops):
        sign = -1.0 if rng.random() < 0.5 else 1.0
        img = apply_op(_NAMES[k], img, magnitude, sign)
    return img


def randaugment_batch(images: np.ndarray, num_ops: int, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    """RandAugment each image of a uint8 NHWC batch independently; a new array."""
    if num_ops <= 0:
        return images.copy()
    return np.stack([randaugment(im, num_ops, magnitude, rng) for im in images])
