"""A contact sheet: augmented training samples of one stage, as the trainer would feed them, in a PNG grid.

People judge augmentation by looking at it. The samples are the first rows of the stage's first
steps, drawn by the run's own plan (seed, batch order, per-row keyed draws) and prepared by the
trainer's own `StepData`: crop, flip, RandAugment at the stage's magnitude, then mixup / cutmix in
mix groups. What the network receives is turned back into pixels (normalisation undone), so a
mixed image shows as the blend the loss sees; each tile is captioned with its target.
"""

from __future__ import annotations

import io
import math

import numpy as np

from ..plan import TrainingPlan
from .pipeline import StepData

#: tiles smaller than this are enlarged by a whole factor (nearest neighbour) so their pixels stay visible
MIN_TILE = 128
_CAPTION = 14
_TITLE_LINE = 16


def network_pixels(x: np.ndarray, resolved) -> np.ndarray:
    """Float NCHW network input -> uint8 NHWC pixels: the normalisation undone, rounded, clipped."""
    x = np.asarray(x, dtype=np.float64).transpose(0, 2, 3, 1)
    if not resolved.normalize_in_model:
        norm = resolved.spec.input.normalization
        x = x * np.asarray(norm.std) + np.asarray(norm.mean)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def caption(target: np.ndarray, classes: list[str]) -> str:
    """The class of a one-hot target, or the two largest weights of a mixed one ("62% cat + 38% dog")."""
    order = np.argsort(-target, kind="stable")
    top = [int(k) for k in order[:2] if target[k] > 1e-6]

    def name(k: int) -> str:
        return classes[k] if k < len(classes) else str(k)

    if len(top) == 1 or target[top[0]] >= 0.995:  # shown as 100% otherwise
        return name(top[0])
    return " + ".join(f"{100 * target[k]:.0f}% {name(k)}" for k in top)


def sample_images(source, spec, schedule, config, *, stage: int, seed: int, n: int):
    """(uint8 NHWC images, captions, the stage, the rows of `source` shown) for the first `n` samples of
    `stage` (an index into the plan's stages): the first rows of its first steps."""
    plan = TrainingPlan(spec, schedule, config, len(source), seed=seed)
    if not 0 <= stage < len(plan.stages):
        raise IndexError(f"the schedule has {len(plan.stages)} stages here (0 to {len(plan.stages) - 1})")
    st = plan.stages[stage]
    resolved = plan.stage_resolved(st)
    data = StepData(plan, source)
    g = plan.mix_group_size
    images, targets, rows = [], [], []
    step = st.start_step
    while sum(len(i) for i in images) < n and step < st.end_step:
        need = n - sum(len(i) for i in images)
        m = min(plan.batch_size, -(-need // g) * g)  # whole mix groups, as the trainer mixes them
        x, t = data.batch(step, slice(0, m), resolved, np.float32)
        images.append(network_pixels(x, resolved)[:need])
        targets.append(t[:need])
        rows.append(plan.batch_indices(step)[:min(m, need)])
        step += 1
    names = [str(c) for c in getattr(source, "classes", None) or []]
    t_all = np.concatenate(targets)
    return np.concatenate(images), [caption(t, names) for t in t_all], st, np.concatenate(rows)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def tile_scale(size: int) -> int:
    return max(1, math.ceil(MIN_TILE / size))


def draw_sheet(images: np.ndarray, captions: list[str], title: list[str]) -> bytes:
    """PNG bytes: the images (uint8 NHWC, C = 1 or 3) in a near-square grid, each captioned, title lines above."""
    from PIL import Image, ImageDraw

    n, h, w = images.shape[:3]
    scale = tile_scale(max(h, w))
    tw, th = w * scale, h * scale
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pad = 4
    top = _TITLE_LINE * len(title) + 2
    font, title_font = _font(11), _font(13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wide = max(measure.textlength(line, font=title_font) for line in title) + 2 * pad
    width = max(cols * (tw + pad) + pad, min(int(wide) + 1, 1600))
    sheet = Image.new("RGB", (width, top + rows * (th + _CAPTION + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(title):
        draw.text((pad, 2 + i * _TITLE_LINE), _fit(draw, line, title_font, sheet.width - 2 * pad), fill="black",
                  font=title_font)
    for k in range(n):
        img = images[k] if images.shape[3] == 3 else np.repeat(images[k], 3, axis=2)
        x0 = pad + (k % cols) * (tw + pad)
        y0 = top + (k // cols) * (th + _CAPTION + pad)
        sheet.paste(Image.fromarray(img, "RGB").resize((tw, th), Image.Resampling.NEAREST), (x0, y0))
        draw.text((x0, y0 + th + 1), _fit(draw, captions[k], font, tw), fill="black", font=font)
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    return buf.getvalue()


def tile_origin(k: int, n: int, size: int, title_lines: int) -> tuple[int, int]:
    """(x, y) of tile k's top-left pixel in a sheet of n tiles of `size` px (for tests and tools)."""
    scale = tile_scale(size)
    cols = math.ceil(math.sqrt(n))
    top = _TITLE_LINE * title_lines + 2
    return 4 + (k % cols) * (size * scale + 4), top + (k // cols) * (size * scale + _CAPTION + 4)


__all__ = ["caption", "draw_sheet", "network_pixels", "sample_images", "tile_origin", "tile_scale"]
