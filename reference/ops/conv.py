"""2-D convolution (no bias): dense (groups=1) via im2col + BLAS, depthwise via a Numba kernel.

Layout: the oracle keeps activations as (C, N, H, W) ("CNHW") internally. With channels
first, a 1x1 conv is one GEMM `W(O, C) @ X(C, N*H*W)`, a k x k conv is one GEMM on the
im2col matrix, and BN statistics reduce along contiguous rows. Weights stay canonical OIHW
(depthwise: C x 1 x k x k). Padding is explicit `(top, bottom, left, right)`, computed by the
caller from the actual input size (`conv_pads`), so TF-SAME's asymmetric pad is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from effv2_spec.rounding import conv_padding

from ..kernels.depthwise import depthwise_backward_kernel, depthwise_forward_kernel
from ..kernels.im2col import col2im_kernel, im2col_kernel

Pads = tuple[int, int, int, int]


def conv_pads(convention: str, hw: tuple[int, int], kernel: int, stride: int) -> Pads:
    """(top, bottom, left, right) for an input of spatial size `hw` under `convention`."""
    top, bottom = conv_padding(convention, hw[0], kernel, stride)
    left, right = conv_padding(convention, hw[1], kernel, stride)
    return top, bottom, left, right


def out_size(size: int, kernel: int, stride: int, before: int, after: int) -> int:
    return (size + before + after - kernel) // stride + 1


def pad(x: np.ndarray, pads: Pads) -> np.ndarray:
    """Zero-pad the last two axes of a CNHW array (always returns a fresh C-contiguous array)."""
    t, b, l, r = pads
    c, n, h, w = x.shape
    xp = np.zeros((c, n, h + t + b, w + l + r), dtype=x.dtype)
    xp[:, :, t:t + h, l:l + w] = x
    return xp


@dataclass
class ConvCache:
    """What the backward pass needs: the im2col matrix (dense) or the padded input (depthwise)."""

    x_shape: tuple[int, ...]
    w: np.ndarray
    stride: int
    pads: Pads
    groups: int
    saved: np.ndarray  # cols (C*k*k, N*Ho*Wo), x itself (1x1), or padded x as NHWC (depthwise)
    padded_shape: tuple[int, ...]


def im2col(xp: np.ndarray, k: int, stride: int, ho: int, wo: int) -> np.ndarray:
    """(C*k*k, N*Ho*Wo) with rows ordered (c, i, j), matching an OIHW weight reshaped to (O, C*k*k)."""
    c, n = xp.shape[:2]
    cols = np.empty((c * k * k, n * ho * wo), dtype=xp.dtype)
    im2col_kernel(xp, k, stride, ho, wo, cols)
    return cols


def col2im(dcols: np.ndarray, padded_shape: tuple[int, ...], k: int, stride: int, ho: int, wo: int) -> np.ndarray:
    """Adjoint of `im2col`: scatter-add the columns back onto the padded input."""
    dxp = np.empty(padded_shape, dtype=dcols.dtype)
    col2im_kernel(dxp, k, stride, ho, wo, np.ascontiguousarray(dcols))
    return dxp


def conv2d_forward(x: np.ndarray, w: np.ndarray, *, stride: int, pads: Pads, groups: int = 1):
    """y = conv(x, w): x (C, N, H, W), w (O, C/groups, k, k) -> y (O, N, Ho, Wo), cache.

    groups must be 1 (dense) or C == O (depthwise).
    """
    c, n, h, wd = x.shape
    o, cg, k, k2 = w.shape
    if k != k2 or k % 2 == 0:
        raise ValueError(f"conv2d: kernel must be square and odd, got {k}x{k2}")
    ho = out_size(h, k, stride, pads[0], pads[1])
    wo = out_size(wd, k, stride, pads[2], pads[3])
    if groups == 1:
        if cg != c:
            raise ValueError(f"conv2d: input has {c} channels, weight expects {cg}")
        w2 = w.reshape(o, c * k * k)
        if k == 1 and stride == 1 and not any(pads):
            saved = np.ascontiguousarray(x).reshape(c, n * h * wd)
        else:
            saved = im2col(pad(x, pads), k, stride, ho, wo)
        y = (w2 @ saved).reshape(o, n, ho, wo)
        padded = (c, n, h + pads[0] + pads[1], wd + pads[2] + pads[3])
        return y, ConvCache(x.shape, w, stride, pads, groups, saved, padded)
    if groups == c == o and cg == 1:
        # depthwise runs channels-last (see kernels/depthwise.py): pad while transposing in
        t, b, l, r = pads
        xp = np.zeros((n, h + t + b, wd + l + r, c), dtype=x.dtype)
        xp[:, t:t + h, l:l + wd, :] = x.transpose(1, 2, 3, 0)
        wk = np.ascontiguousarray(w.reshape(c, k * k).T).reshape(k, k, c)
        y = np.empty((n, ho, wo, c), dtype=x.dtype)
        depthwise_forward_kernel(xp, wk, stride, y)
        return np.ascontiguousarray(y.transpose(3, 0, 1, 2)), ConvCache(x.shape, w, stride, pads, groups, xp,
                                                                        xp.shape)
    raise NotImplementedError(f"conv2d: groups={groups} with C={c}, O={o} (only dense and depthwise)")


def conv2d_backward(dy: np.ndarray, cache: ConvCache):
    """(dx, dw) for `conv2d_forward`; dx has x's shape (padding cropped), dw the weight's."""
    w, s, (t, _, l, _) = cache.w, cache.stride, cache.pads  # bottom/right padding is cropped implicitly
    o, cg, k, _ = w.shape
    c, n, h, wd = cache.x_shape
    ho, wo = dy.shape[2:]
    if cache.groups == 1:
        dy2 = np.ascontiguousarray(dy).reshape(o, n * ho * wo)
        dw = (dy2 @ cache.saved.T).reshape(w.shape)
        dcols = w.reshape(o, c * k * k).T @ dy2
        if k == 1 and s == 1 and not any(cache.pads):
            return dcols.reshape(c, n, h, wd), dw
        dxp = col2im(dcols, cache.padded_shape, k, s, ho, wo)
    else:
        wk = np.ascontiguousarray(w.reshape(c, k * k).T).reshape(k, k, c)
        dxp = np.empty(cache.padded_shape, dtype=dy.dtype)
        dwk = np.empty_like(wk)
        depthwise_backward_kernel(cache.saved, wk, np.ascontiguousarray(dy.transpose(1, 2, 3, 0)), s, dxp, dwk)
        dw = np.ascontiguousarray(dwk.reshape(k * k, c).T).reshape(w.shape)
        return np.ascontiguousarray(dxp[:, t:t + h, l:l + wd, :].transpose(3, 0, 1, 2)), dw
    return np.ascontiguousarray(dxp[:, :, t:t + h, l:l + wd]), dw
