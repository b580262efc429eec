"""Blocked layout changes around the channels-last depthwise kernels (Numba), with NumPy twins.

CNHW (C, N, H, W) <-> padded NHWC (N, Hp, Wp, C). NumPy's strided copy of `x.transpose(1, 2, 3, 0)`
walks the source with a stride of N*H*W values per channel, one cache miss per value; here the
copy runs over blocks of 16 channels, so the 16 source rows stay in L1 while one output row of the
block is written contiguously. Each kernel works on channels c0 <= c < c1 (the pool splits them in
multiples of 16) and writes every value of its channels (zero borders included), so no memset.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_CB = 16

_TO_SIGS = [
    "void(float32[:, :, :, ::1], float32[:, :, :, ::1], int64, int64, uint64, uint64)",
    "void(float64[:, :, :, ::1], float64[:, :, :, ::1], int64, int64, uint64, uint64)",
]


@njit(_TO_SIGS, cache=True, nogil=True)
def cnhw_to_nhwc_pad_kernel(x, out, top, left, c0, c1):
    """out[n, top + h, left + w, c] = x[c, n, h, w]; out's other rows / columns (padding) = 0."""
    _, N, H, W = x.shape
    _, Hp, Wp, _ = out.shape
    for n in range(N):
        for hp in range(Hp):
            row = out[n, hp]
            h = hp - top
            if h < 0 or h >= H:
                for w in range(Wp):
                    for c in range(c0, c1):
                        row[w, c] = 0.0
                continue
            for w in range(Wp):
                if w < left or w >= left + W:
                    for c in range(c0, c1):
                        row[w, c] = 0.0
            for cb in range(c0, c1, _CB):
                ce = min(cb + _CB, c1)
                for w in range(W):
                    dst = row[left + w]
                    for c in range(cb, ce):
                        dst[c] = x[c, n, h, w]


@njit(_TO_SIGS, cache=True, nogil=True)
def nhwc_crop_to_cnhw_kernel(xp, out, top, left, c0, c1):
    """out[c, n, h, w] = xp[n, top + h, left + w, c] (the inverse: crop the padding, channels first)."""
    _, N, H, W = out.shape
    for n in range(N):
        for h in range(H):
            row = xp[n, top + h]
            for cb in range(c0, c1, _CB):
                ce = min(cb + _CB, c1)
                for c in range(cb, ce):
                    dst = out[c, n, h]
                    for w in range(W):
                        dst[w] = row[left + w, c]


# ---- NumPy twins ----------------------------------------------------------------------------
def cnhw_to_nhwc_pad_naive(x: np.ndarray, pads) -> np.ndarray:
    t, b, l, r = pads
    c, n, h, w = x.shape
    out = np.zeros((n, h + t + b, w + l + r, c), dtype=x.dtype)
    out[:, t:t + h, l:l + w, :] = x.transpose(1, 2, 3, 0)
    return out


def nhwc_crop_to_cnhw_naive(xp: np.ndarray, top: int, left: int, h: int, w: int) -> np.ndarray:
    return np.ascontiguousarray(xp[:, top:top + h, left:left + w, :].transpose(3, 0, 1, 2))
