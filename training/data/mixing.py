"""Mixup and CutMix inside one mix group, as google/automl efficientnetv2/datasets.py applies them
(`ImageNetInput.mixing`, `mixup`, `cutmix`, `cutmix_mask`) to the batch it sees.

* mixup only: per sample lam ~ Beta(a, a), lam = max(lam, 1 - lam);
  x = lam * x + (1 - lam) * x[::-1], t = lam * t + (1 - lam) * t[::-1] (partner: the group reversed).
* cutmix only: per sample a box (`cutmix_box`); the box is pasted from the partner (the group
  reversed). The label weight is automl's `mix_area = reduce_sum(mask) / size(mask)` over the
  whole part being cut-mixed: ONE number, the mean pasted fraction of that part, shared by all its
  samples (`cutmix_area='group'`, the default). `cutmix_area='sample'` uses each sample's own
  pasted fraction instead (what the CutMix paper does per image; not the official code).
* both > 0: the first n // 2 samples get mixup, the other n - n // 2 cutmix, each part paired with
  ITS OWN reversal (automl calls mixup(image[:bs]) and cutmix(image[bs:]), each reversing its input),
  never across the halves.
* an alpha of 0 (or less) switches that mixing off.

Sample i's lambda or box comes from rngs[i] only, so a sample's draws depend on its generator and
its place in the group, never on who else is drawn first. Draw order of a box: centre column,
centre row, then the Beta area (cutmix_mask's order). Images are float (n, C, H, W) (any leading
layout with H, W last), targets float (n, K); both come back as new arrays of the same dtype.
"""

from __future__ import annotations

import numpy as np


def mixup(x: np.ndarray, targets: np.ndarray, alpha: float, rngs) -> tuple[np.ndarray, np.ndarray]:
    """automl `mixup` on a part of a group; partner = the part reversed."""
    n = x.shape[0]
    lam = np.array([rng.beta(alpha, alpha) for rng in rngs[:n]], dtype=np.float64)
    lam = np.maximum(lam, 1.0 - lam)
    lx = lam.astype(x.dtype).reshape((n,) + (1,) * (x.ndim - 1))
    lt = lam.astype(targets.dtype)[:, None]
    return x * lx + x[::-1] * (1 - lx), targets * lt + targets[::-1] * (1 - lt)


def cutmix_box(h: int, w: int, alpha: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """automl `cutmix_mask` as (y1, y2, x1, x2): the pasted rows [y1, y2) and columns [x1, x2).

    Centre (r_y, r_x) uniform over the pixels; area ~ Beta(a, a); side ratio sqrt(1 - area) in float32;
    r_w = int(ratio * w), r_h = int(ratio * h); box = centre -/+ r // 2 each side, clipped to the image.
    """
    r_x = int(rng.integers(w))
    r_y = int(rng.integers(h))
    area = np.float32(rng.beta(alpha, alpha))
    ratio = np.sqrt(np.float32(1.0) - area)
    r_w = int(ratio * np.float32(w))
    r_h = int(ratio * np.float32(h))
    x1, x2 = min(max(r_x - r_w // 2, 0), w), min(max(r_x + r_w // 2, 0), w)
    y1, y2 = min(max(r_y - r_h // 2, 0), h), min(max(r_y + r_h // 2, 0), h)
    return y1, y2, x1, x2


def cutmix(x: np.ndarray, targets: np.ndarray, alpha: float, rngs,
           cutmix_area: str = "group") -> tuple[np.ndarray, np.ndarray]:
    """automl `cutmix` on a part of a group; partner = the part reversed (see module docstring)."""
    n, (h, w) = x.shape[0], x.shape[-2:]
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        y1, y2, x1, x2 = cutmix_box(h, w, alpha, rngs[i])
        masks[i, y1:y2, x1:x2] = True
    m = masks.reshape((n,) + (1,) * (x.ndim - 3) + (h, w))
    out = np.where(m, x[::-1], x).astype(x.dtype)
    if cutmix_area == "group":
        area = np.full(n, masks.sum() / masks.size)
    elif cutmix_area == "sample":
        area = masks.reshape(n, -1).mean(axis=1)
    else:
        raise ValueError(f"cutmix: cutmix_area must be 'group' or 'sample', got {cutmix_area!r}")
    a = area.astype(targets.dtype)[:, None]
    return out, (1 - a) * targets + a * targets[::-1]


def mix_group(x: np.ndarray, targets: np.ndarray, *, mixup_alpha: float, cutmix_alpha: float, rngs,
              cutmix_area: str = "group") -> tuple[np.ndarray, np.ndarray]:
    """automl `ImageNetInput.mixing` on ONE mix group: (mixed x, soft targets); rngs[i] for sample i."""
    n = x.shape[0]
    if len(rngs) != n or targets.shape[0] != n:
        raise ValueError(f"mix_group: {n} images, {targets.shape[0]} targets, {len(rngs)} generators")
    if mixup_alpha > 0 and cutmix_alpha > 0:
        half = n // 2
        x1, t1 = mixup(x[:half], targets[:half], mixup_alpha, rngs[:half])
        x2, t2 = cutmix(x[half:], targets[half:], cutmix_alpha, rngs[half:], cutmix_area)
        return np.concatenate([x1, x2]), np.concatenate([t1, t2])
    if mixup_alpha > 0:
        return mixup(x, targets, mixup_alpha, rngs)
    if cutmix_alpha > 0:
        return cutmix(x, targets, cutmix_alpha, rngs, cutmix_area)
    return x.copy(), targets.copy()
