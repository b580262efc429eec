"""The random-resized crop's resize in one Numba pass, bit for bit data/crop.py's NumPy path.

What it computes: `to_uint8(resize_bilinear_tf(region, size))` (the twin, `resize_uint8_naive`), i.e.
TF's ResizeBilinear with half-pixel centres in float32, in the lerp form
  top = tl + (tr - tl) * dx,  bottom = bl + (br - bl) * dx,  out = top + (bottom - top) * dy,
each operation rounded to float32 (no fastmath: nothing is contracted into an FMA), then clipped to
[0, 255] and truncated to uint8. The sampling positions and fractions come from the twin's own
`_lerp_weights`, computed once per call in NumPy, so both paths read the same neighbours with the same
float32 fractions.

Why: the NumPy path builds six float32 temporaries of the output's size (the fancy-indexed corners,
top, bottom), a float32 copy of the whole region and a clipped copy, which made the resize most of the
per-sample crop cost at 224-300 px. Here the uint8 region is read in place (any strides: it is a view
of the decoded image), each source row is lerped horizontally once however many output rows read it
(a crop smaller than the stage size is the common case at 224-300 px), and the vertical lerp, clip and
truncation run over contiguous rows straight into the uint8 result. 375 x 500 -> 300 px: NumPy 6.3 ms,
one pass per output value 0.9 ms, these two passes 0.58 ms; 120 x 150 -> 300 px: 0.89 -> 0.22 ms. RGB's
horizontal lerp written out per channel: 128-300 px regions to 128 / 224 / 300 px, 156 / 268 / 375 us ->
113 / 194 / 259 us (the same bits).
data/crop.py takes this path only where Numba is loaded (kernel_gate.data_kernel).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

from effv2_train.data.crop import _lerp_weights, resize_bilinear_tf, to_uint8

_ZERO = np.float32(0.0)
_F255 = np.float32(255.0)

#: compiled entry point -> its NumPy twin (tests/reference/test_kernel_twins.py)
TWINS = {"resize_uint8_into": "resize_uint8_naive"}


def resize_uint8(region: np.ndarray, size) -> np.ndarray:
    """uint8 (H, W, C) -> uint8 (out_h, out_w, C), `size` an int or (out_h, out_w): `resize_uint8_naive`."""
    if region.dtype != np.uint8 or region.ndim != 3 or min(region.shape) < 1:
        raise ValueError(f"resize: expected a non-empty uint8 (H, W, C) region, got {region.dtype} {region.shape}")
    out_h, out_w = (size, size) if np.isscalar(size) else size
    y0, y1, dy = _lerp_weights(region.shape[0], out_h)
    x0, x1, dx = _lerp_weights(region.shape[1], out_w)
    out = np.empty((out_h, out_w, region.shape[2]), np.uint8)
    resize_uint8_into(region, y0.astype(np.int64, copy=False), y1.astype(np.int64, copy=False), dy,
                      x0.astype(np.int64, copy=False), x1.astype(np.int64, copy=False), dx, out)
    return out


def resize_uint8_naive(region: np.ndarray, size) -> np.ndarray:
    """The NumPy twin: data/crop.py's resize then its clip and truncation."""
    return to_uint8(resize_bilinear_tf(region, size))


def _signature():
    """The region any strides, read-only (a decoded Pillow image's array is; a writable one converts)."""
    index, frac = types.int64[::1], types.float32[::1]
    region = types.Array(types.uint8, 3, "A", readonly=True)
    return types.void(region, index, index, frac, index, index, frac, types.uint8[:, :, ::1])


@njit(cache=True, nogil=True)
def _lerp_row(src, row, x0, x1, dx, buf):
    """buf[j * C + k] = the horizontal lerp of source row `row` at output column j, channel k."""
    c = src.shape[2]
    s = src[row]
    if c == 3:  # RGB written out: the inner loop of three no longer runs per pixel (30% of the resize)
        for j in range(x0.shape[0]):
            left, right, fx, p = x0[j], x1[j], dx[j], 3 * j
            a = np.float32(s[left, 0])
            buf[p] = a + (np.float32(s[right, 0]) - a) * fx
            a = np.float32(s[left, 1])
            buf[p + 1] = a + (np.float32(s[right, 1]) - a) * fx
            a = np.float32(s[left, 2])
            buf[p + 2] = a + (np.float32(s[right, 2]) - a) * fx
        return
    for j in range(x0.shape[0]):
        left, right, fx = x0[j], x1[j], dx[j]
        for k in range(c):
            a = np.float32(s[left, k])
            buf[j * c + k] = a + (np.float32(s[right, k]) - a) * fx


@njit(_signature(), cache=True, nogil=True)
def resize_uint8_into(src, y0, y1, dy, x0, x1, dx, out):
    """out[i] = top + (bottom - top) * dy[i], clipped, truncated, where top and bottom are source rows y0[i]
    and y1[i] lerped horizontally: the per-pixel formula's very operations, split in two passes so that a
    source row's horizontal lerps are computed once for the (up to) several output rows that read it, and
    the vertical pass runs over contiguous buffers."""
    out_h, out_w, c = out.shape
    n = out_w * c
    bufs = np.empty((2, n), np.float32)
    held = np.array([-1, -1])  # the source row whose lerps each buffer holds
    flat = out.reshape(out_h, n)
    for i in range(out_h):
        a, b, fy = y0[i], y1[i], dy[i]
        if held[0] == a:
            ta = 0
        elif held[1] == a:
            ta = 1
        else:  # into the buffer that does not hold row b
            ta = 0 if held[0] != b else 1
            _lerp_row(src, a, x0, x1, dx, bufs[ta])
            held[ta] = a
        if held[ta] == b:
            tb = ta
        else:
            tb = 1 - ta
            if held[tb] != b:
                _lerp_row(src, b, x0, x1, dx, bufs[tb])
                held[tb] = b
        top, bottom, row = bufs[ta], bufs[tb], flat[i]
        for p in range(n):
            t = top[p]
            v = t + (bottom[p] - t) * fy
            row[p] = np.uint8(np.int32(min(max(v, _ZERO), _F255)))  # in [0, 255]: truncation either way
