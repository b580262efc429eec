"""RandAugment (automl variant) of all the rows of a training step in one Numba pass, bit for bit
the NumPy ops of data/randaugment_automl.py.

Why: the NumPy ops run on 16-32 px images, where each costs its NumPy call overhead (tens of
microseconds) rather than its arithmetic; two layers on 32 rows were ~5 ms of a CPU training step.
Here one call applies every row's drawn ops, image by image and op by op. data/pipeline.py takes this
path only in a process that has already loaded Numba (the oracle's): the framework trainers never
import Numba, and run the NumPy ops.

What stays in Python: every random draw (randaugment_automl.draw_layers, from each row's generator in
the NumPy path's order) and every value the NumPy ops compute from Python scalars, which `encode`
takes from the same functions: the transform coefficients (`affine`: rotate's float32 cos, sin and
offsets), the blend mode and float32 factor, cutout's box, and the pointwise ops (Invert, Posterize,
Solarize, SolarizeAdd, Contrast, Brightness) as their table of 256 levels (`pointwise_table`: the
NumPy op itself run on every level). The kernel does the rest with the NumPy ops' arithmetic:
  * float32 operations in the same order, each rounded (no fastmath: nothing is contracted into
    an FMA or reassociated), float -> uint8 by truncation;
  * autocontrast per channel: scale = 255 / (hi - lo), offset = -lo * scale, x * scale + offset
    clipped to [0, 255]; equalize in integers (PIL's look-up table);
  * grey level (Color) trunc(((r / 255) w0 + (g / 255) w1) + (b / 255) w2) * 255.5), a grey image
    (C == 1) read as grey RGB; sharpness's 3 x 3 sum exact in float64, border pixels kept;
  * transform: source (a0 x + a1 y) + a2, rounded half away from zero, moved onto the 1-pixel FILL
    border when outside (a NaN coordinate too, as np.fmax sends it there).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from effv2_train.data import randaugment_automl as ra
from effv2_train.data import randaugment_constants as rc

# what the kernel does per layer (the `kinds` array)
LOOKUP, AUTOCONTRAST, EQUALIZE, TRANSFORM, CUTOUT, COLOR, SHARPNESS = range(7)
_KIND = {"AutoContrast": AUTOCONTRAST, "Equalize": EQUALIZE, "Cutout": CUTOUT, "Color": COLOR, "Sharpness": SHARPNESS}
_KIND.update({name: TRANSFORM for name in ra.GEOMETRIC})
_KIND.update({name: LOOKUP for name in ra.POINTWISE})
assert set(_KIND) == set(ra.OP_NAMES)

_FILL = np.uint8(rc.FILL)
_BLEND_FIRST, _BLEND_SECOND, _BLEND_CLIPPED = rc.BLEND_FIRST, rc.BLEND_SECOND, rc.BLEND_CLIPPED
_W0, _W1, _W2 = rc.GREY_WEIGHTS
_INV_255, _GREY_SCALE = rc.INV_255, rc.GREY_SCALE
_SMOOTH_EDGE, _SMOOTH_CENTRE = rc.SMOOTH_EDGE, rc.SMOOTH_CENTRE  # float64
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_F255 = np.float32(255.0)


def encode(drawn: list[list[tuple[str, object]]], h: int, w: int):
    """(kinds, ints, floats, tables) of each row's drawn ops on h x w images: `drawn[r]` is row r's
    (name, argument) per layer, as randaugment_automl.draw_layers gives them; every row has as many."""
    rows = len(drawn)
    layers = len(drawn[0]) if rows else 0
    kinds = np.empty((rows, layers), np.int64)
    ints = np.zeros((rows, layers, 4), np.int64)
    floats = np.zeros((rows, layers, 6), np.float32)
    tables = np.zeros((rows, layers, 256), np.uint8)
    for r, ops in enumerate(drawn):
        if len(ops) != layers:
            raise ValueError(f"randaugment rows: row {r} has {len(ops)} ops, row 0 has {layers}")
        for i, (name, arg) in enumerate(ops):
            kind = kinds[r, i] = _KIND[name]
            if kind == LOOKUP:
                tables[r, i] = ra.pointwise_table(name, arg, h, w)
            elif kind == TRANSFORM:
                floats[r, i] = ra.affine(name, arg, h, w)  # each rounded to float32, as transform does
            elif kind == CUTOUT:
                ints[r, i] = ra.cutout_box(*arg, h, w)
            elif kind == COLOR or kind == SHARPNESS:
                ints[r, i, 0] = ra.blend_mode(arg)
                floats[r, i, 0] = arg  # np.float32(factor)
    return kinds, ints, floats, tables


def randaugment_rows(images: np.ndarray, flips, drawn: list[list[tuple[str, object]]]) -> np.ndarray:
    """uint8 (rows, H, W, C) with C 1 or 3: row r flipped left-right if flips[r], then its `drawn` ops
    applied in order (randaugment_automl.randaugment with those draws, bit for bit). A new array."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(f"randaugment: expected uint8 (rows, H, W, 1|3) images, got {images.dtype} {images.shape}")
    rows, h, w, _ = images.shape
    if len(flips) != rows or len(drawn) != rows:
        raise ValueError(f"randaugment rows: {rows} images, {len(flips)} flips, {len(drawn)} op lists")
    kinds, ints, floats, tables = encode(drawn, h, w)
    out = np.empty_like(images, order="C")
    randaugment_rows_into(np.ascontiguousarray(images), np.asarray(flips, np.uint8), kinds, ints, floats, tables, out)
    return out


@njit(cache=True, nogil=True)
def _blend(a, b, mode, factor):
    """randaugment_automl.blend of one pixel pair: a + factor * (b - a) in float32, truncated."""
    if mode == _BLEND_FIRST:
        return a
    if mode == _BLEND_SECOND:
        return b
    fa = np.float32(a)
    t = fa + factor * (np.float32(b) - fa)
    if mode == _BLEND_CLIPPED:
        # clip then truncate = truncate then clip, done in integers: a float compare-and-branch here was
        # mispredicted on half the pixels of a factor > 1 (Color at magnitude 15: 2.0 -> 0.37 ms at 224 px)
        v = np.int32(t)
        v = v if v > 0 else 0
        return np.uint8(v if v < 255 else 255)
    return np.uint8(t)


# The working images are flat (H * W * C,) buffers, pixel (y, x) channel k at (y * W + x) * C + k: the
# per-value ops run as one flat loop, the others index pixels.
@njit(cache=True, nogil=True)
def _copy(src, dst):
    for i in range(src.shape[0]):
        dst[i] = src[i]


@njit(cache=True, nogil=True)
def _copy_flipped(src, dst, h, w, c):
    for y in range(h):
        for x in range(w):
            p, q = (y * w + x) * c, (y * w + w - 1 - x) * c
            for k in range(c):
                dst[p + k] = src[q + k]


@njit(cache=True, nogil=True)
def _lookup(src, dst, table):
    for i in range(src.shape[0]):
        dst[i] = table[src[i]]


@njit(cache=True, nogil=True)
def _autocontrast(src, dst, c):
    n = src.shape[0]
    for k in range(c):
        lo = src[k]
        hi = lo
        for i in range(k, n, c):
            lo = min(lo, src[i])
            hi = max(hi, src[i])
        if hi > lo:
            flo = np.float32(lo)
            scale = _F255 / (np.float32(hi) - flo)
            offset = -flo * scale
            for i in range(k, n, c):
                t = np.float32(src[i]) * scale + offset
                if t < _ZERO:
                    t = _ZERO
                if t > _F255:
                    t = _F255
                dst[i] = np.uint8(t)
        else:
            for i in range(k, n, c):
                dst[i] = src[i]


@njit(cache=True, nogil=True)
def _equalize(src, dst, c, hist, table):
    n = src.shape[0]
    for k in range(c):
        hist[:] = 0
        for i in range(k, n, c):
            hist[src[i]] += 1
        last = 255
        while hist[last] == 0:
            last -= 1
        step = (n // c - hist[last]) // 255
        if step == 0:
            for i in range(k, n, c):
                dst[i] = src[i]
            continue
        table[0] = 0
        total = 0
        for g in range(1, 256):
            total += hist[g - 1]
            table[g] = min((total + step // 2) // step, 255)
        for i in range(k, n, c):
            dst[i] = table[src[i]]


@njit(cache=True, nogil=True)
def _source(v, limit):
    """A transform coordinate: round half away from zero, + 1 into the padded image, clipped onto its border."""
    t = np.trunc(v)
    f = v - t
    v = t + np.trunc(f + f) + _ONE
    if not v >= _ZERO:  # np.fmax(v, 0): a NaN goes to 0 too
        v = _ZERO
    if v > limit:
        v = limit
    return int(v)


@njit(cache=True, nogil=True)
def _transform(src, dst, h, w, c, a):
    a0, a1, a2, b0, b1, b2 = a[0], a[1], a[2], a[3], a[4], a[5]
    col_limit, row_limit = np.float32(w + 1), np.float32(h + 1)
    p = 0
    for y in range(h):
        fy = np.float32(y)
        for x in range(w):
            fx = np.float32(x)
            col = _source(a0 * fx + a1 * fy + a2, col_limit)
            row = _source(b0 * fx + b1 * fy + b2, row_limit)
            if col == 0 or row == 0 or col == w + 1 or row == h + 1:
                for k in range(c):
                    dst[p + k] = _FILL
            else:
                q = ((row - 1) * w + col - 1) * c
                for k in range(c):
                    dst[p + k] = src[q + k]
            p += c


@njit(cache=True, nogil=True)
def _cutout(src, dst, w, c, box):
    _copy(src, dst)
    top, bottom, left, right = box[0], box[1], box[2], box[3]
    for y in range(top, bottom):
        for i in range((y * w + left) * c, (y * w + right) * c):
            dst[i] = _FILL


@njit(cache=True, nogil=True)
def _color(src, dst, c, mode, factor):
    g1, g2 = 1 % c, 2 % c  # a grey image (C == 1) is grey RGB
    for p in range(0, src.shape[0], c):
        grey = (np.float32(src[p]) * _INV_255 * _W0 + np.float32(src[p + g1]) * _INV_255 * _W1
                + np.float32(src[p + g2]) * _INV_255 * _W2)
        level = np.uint8(grey * _GREY_SCALE)
        for k in range(c):
            dst[p + k] = _blend(level, src[p + k], mode, factor)


@njit(cache=True, nogil=True)
def _sharpness(src, dst, h, w, c, mode, factor):
    row = w * c
    for y in range(h):
        for x in range(w):
            inside = 0 < y < h - 1 and 0 < x < w - 1
            p = (y * w + x) * c
            for k in range(c):
                i = p + k
                pixel = src[i]
                smooth = pixel
                if inside:
                    box = (np.int64(src[i - row - c]) + np.int64(src[i - row]) + np.int64(src[i - row + c])
                           + np.int64(src[i - c]) + np.int64(pixel) + np.int64(src[i + c])
                           + np.int64(src[i + row - c]) + np.int64(src[i + row]) + np.int64(src[i + row + c]))
                    centre = np.int64(pixel)
                    acc = np.float64(box - centre) * _SMOOTH_EDGE + np.float64(centre) * _SMOOTH_CENTRE
                    smooth = np.uint8(min(acc, 255.0))
                dst[i] = _blend(smooth, pixel, mode, factor)


@njit("void(uint8[:, :, :, ::1], uint8[::1], int64[:, ::1], int64[:, :, ::1], float32[:, :, ::1], "
      "uint8[:, :, ::1], uint8[:, :, :, ::1])", cache=True, nogil=True)
def randaugment_rows_into(images, flips, kinds, ints, floats, tables, out):
    """out[r] = images[r], flipped left-right if flips[r], then op kinds[r, i] (with ints / floats /
    tables[r, i]) for each layer i in order (see `encode`)."""
    rows, h, w, c = images.shape
    n = h * w * c
    flat_images = images.reshape(rows, n)
    flat_out = out.reshape(rows, n)
    a = np.empty(n, np.uint8)
    b = np.empty(n, np.uint8)
    hist = np.empty(256, np.int64)
    table = np.empty(256, np.int64)
    for r in range(rows):
        if flips[r]:
            _copy_flipped(flat_images[r], a, h, w, c)
        else:
            _copy(flat_images[r], a)
        for i in range(kinds.shape[1]):
            kind = kinds[r, i]
            if kind == LOOKUP:
                _lookup(a, b, tables[r, i])
            elif kind == AUTOCONTRAST:
                _autocontrast(a, b, c)
            elif kind == EQUALIZE:
                _equalize(a, b, c, hist, table)
            elif kind == TRANSFORM:
                _transform(a, b, h, w, c, floats[r, i])
            elif kind == CUTOUT:
                _cutout(a, b, w, c, ints[r, i])
            elif kind == COLOR:
                _color(a, b, c, ints[r, i, 0], floats[r, i, 0])
            else:
                _sharpness(a, b, h, w, c, ints[r, i, 0], floats[r, i, 0])
            a, b = b, a
        _copy(a, flat_out[r])


def randaugment_rows_naive(images: np.ndarray, flips, drawn: list[list[tuple[str, object]]]) -> np.ndarray:
    """`randaugment_rows` by the NumPy ops: row r flipped left-right if flips[r], then its drawn ops in order."""
    rows = [ra.apply_layers(np.ascontiguousarray(img[:, ::-1]) if flip else img, ops)
            for img, flip, ops in zip(images, flips, drawn)]
    return np.stack(rows) if rows else np.empty_like(images)


# compiled entry point -> its NumPy twin (tests/reference/test_kernel_twins.py holds every module to its table)
TWINS = {"randaugment_rows_into": "randaugment_rows_naive"}
