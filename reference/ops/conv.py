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

from ..kernels.network.depthwise import depthwise_backward_samples, depthwise_forward_samples
from ..kernels.network.im2col import col2im_crop_kernel, im2col_pad_kernel
from ..kernels.network.layout import cnhw_to_nhwc_pad_kernel, nhwc_crop_to_cnhw_kernel
from ..kernels.runtime.pool import parallel_for

_CH_ALIGN = 16  # channels-last kernels split C in multiples of 16 (a 64-byte line of float32): no false sharing
# the pool's MIN_CHUNK counts streamed values (~1 ns each); a GEMM multiply-add costs ~1/30 of that, so a GEMM
# is split only when each piece repays a dispatch (measured: 2-way splits of 0.3-1 ms GEMMs were slower)
_MACS_PER_VALUE = 32
_SAMPLE_BLOCK = 8  # depthwise backward: samples per block (fixed, whatever the thread count)

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


def im2col(x: np.ndarray, k: int, stride: int, ho: int, wo: int, pads: Pads = (0, 0, 0, 0)) -> np.ndarray:
    """(C*k*k, N*Ho*Wo) with rows ordered (c, i, j), matching an OIHW weight reshaped to (O, C*k*k);
    x is zero-padded by `pads` on the fly (no padded copy)."""
    x = np.ascontiguousarray(x)
    c, n = x.shape[:2]
    kk = k * k
    cols = np.empty((c * kk, n * ho * wo), dtype=x.dtype)
    parallel_for(lambda lo, hi: im2col_pad_kernel(x[lo:hi], k, stride, pads[0], pads[2], ho, wo,
                                                  cols[lo * kk:hi * kk]), c, cols.shape[1] * kk)
    return cols


def col2im(dcols: np.ndarray, shape: tuple[int, ...], k: int, stride: int, ho: int, wo: int,
           pads: Pads = (0, 0, 0, 0)) -> np.ndarray:
    """Adjoint of `im2col`: scatter-add the columns back onto an input of `shape` (padding dropped)."""
    dx = np.empty(shape, dtype=dcols.dtype)
    dcols = np.ascontiguousarray(dcols)
    kk = k * k
    parallel_for(lambda lo, hi: col2im_crop_kernel(dx[lo:hi], k, stride, pads[0], pads[2], ho, wo,
                                                   dcols[lo * kk:hi * kk]), shape[0], dcols.shape[1] * kk)
    return dx


def matmul(a: np.ndarray, b: np.ndarray, split: str = "cols") -> np.ndarray:
    """a @ b, split over the pool by columns of b (the samples) or rows of a; each piece is one BLAS
    call on the same operands, so the result does not depend on the thread count."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    if split == "cols":
        parallel_for(lambda lo, hi: np.matmul(a, b[:, lo:hi], out=out[:, lo:hi]), b.shape[1],
                     a.shape[0] * a.shape[1] // _MACS_PER_VALUE, align=16)
    else:
        # pieces of 8 rows: OpenBLAS switches kernels for thinner ones (different float64 rounding)
        parallel_for(lambda lo, hi: np.matmul(a[lo:hi], b, out=out[lo:hi]), a.shape[0],
                     a.shape[1] * b.shape[1] // _MACS_PER_VALUE, align=8)
    return out


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
            saved = im2col(x, k, stride, ho, wo, pads)
        y = matmul(w2, saved).reshape(o, n, ho, wo)
        padded = (c, n, h + pads[0] + pads[1], wd + pads[2] + pads[3])
        return y, ConvCache(x.shape, w, stride, pads, groups, saved, padded)
    if groups == c == o and cg == 1:
        # depthwise runs channels-last (see kernels/network/depthwise.py): pad while transposing in, transpose back out
        t, b, l, r = pads
        x = np.ascontiguousarray(x)
        xp = np.empty((n, h + t + b, wd + l + r, c), dtype=x.dtype)
        wk = np.ascontiguousarray(w.reshape(c, k * k).T).reshape(k, k, c)
        y = np.empty((n, ho, wo, c), dtype=x.dtype)
        out = np.empty((c, n, ho, wo), dtype=x.dtype)

        # layout changes by channel blocks, the conv by samples (kernels/network/depthwise.py: why not by channels)
        parallel_for(lambda lo, hi: cnhw_to_nhwc_pad_kernel(x, xp, t, l, lo, hi), c, n * h * wd, align=_CH_ALIGN)
        parallel_for(lambda lo, hi: depthwise_forward_samples(xp, wk, stride, y, lo, hi), n, ho * wo * k * k * c)
        parallel_for(lambda lo, hi: nhwc_crop_to_cnhw_kernel(y, out, 0, 0, lo, hi), c, n * ho * wo, align=_CH_ALIGN)
        return out, ConvCache(x.shape, w, stride, pads, groups, xp, xp.shape)
    raise NotImplementedError(f"conv2d: groups={groups} with C={c}, O={o} (only dense and depthwise)")


def conv2d_backward(dy: np.ndarray, cache: ConvCache, need_dx: bool = True):
    """(dx, dw) for `conv2d_forward`; dx has x's shape (padding cropped), dw the weight's. With
    need_dx=False, dx is None and not computed (the network input's gradient, which training never uses)."""
    w, s, (t, _, l, _) = cache.w, cache.stride, cache.pads  # bottom/right padding is cropped implicitly
    o, cg, k, _ = w.shape
    c, n, h, wd = cache.x_shape
    ho, wo = dy.shape[2:]
    if cache.groups == 1:
        dy2 = np.ascontiguousarray(dy).reshape(o, n * ho * wo)
        dw = matmul(dy2, cache.saved.T, split="rows").reshape(w.shape)
        if not need_dx:
            return None, dw
        dcols = matmul(w.reshape(o, c * k * k).T, dy2)
        if k == 1 and s == 1 and not any(cache.pads):
            return dcols.reshape(c, n, h, wd), dw
        return col2im(dcols, cache.x_shape, k, s, ho, wo, cache.pads), dw
    else:
        wk = np.ascontiguousarray(w.reshape(c, k * k).T).reshape(k, k, c)
        dxp = np.empty(cache.padded_shape, dtype=dy.dtype)
        dy = np.ascontiguousarray(dy)
        dyt = np.empty((n, ho, wo, c), dtype=dy.dtype)
        dx = np.empty((c, n, h, wd), dtype=dy.dtype)
        # layout changes by channel blocks, the conv itself by fixed blocks of samples: each block's dw share is
        # summed in block order afterwards, so the result does not depend on how many threads took the blocks
        parallel_for(lambda lo, hi: cnhw_to_nhwc_pad_kernel(dy, dyt, 0, 0, lo, hi), c, n * ho * wo, align=_CH_ALIGN)
        starts = range(0, n, _SAMPLE_BLOCK)
        dw_parts = np.empty((len(starts), k, k, c), dtype=dy.dtype)

        def part(lo, hi):
            for b in range(lo, hi):
                depthwise_backward_samples(cache.saved, wk, dyt, s, dxp, dw_parts[b], starts[b],
                                           min(starts[b] + _SAMPLE_BLOCK, n))

        parallel_for(part, len(starts), _SAMPLE_BLOCK * ho * wo * k * k * c)
        parallel_for(lambda lo, hi: nhwc_crop_to_cnhw_kernel(dxp, dx, t, l, lo, hi), c, n * h * wd, align=_CH_ALIGN)
        dwk = dw_parts[0] if len(starts) == 1 else np.add.reduce(dw_parts, axis=0)
        dw = np.ascontiguousarray(dwk.reshape(k * k, c).T).reshape(w.shape)
        return (dx if need_dx else None), dw
