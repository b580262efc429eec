"""The evaluation transform of a spec: image file -> network input, in NumPy and Pillow only.

`input.eval_preprocessing` says how an image is resized and cropped to the eval size
(docs/evaluation.md gives each peer's rule and where it is written); `input.normalization`
how raw pixels become network input. Resampling happens on uint8 RGB with Pillow, as
torchvision's and timm's PIL paths and Keras's `load_img` do, so the same file gives the
peer's own pixels. Nothing here imports numba, torch or jax.

Unreadable files raise `ImageError` (one line: the file and why); callers decide whether
to skip or stop.
"""

from __future__ import annotations

import math
import os

import numpy as np

from effv2_spec.architecture import ArchitectureSpec, EvalPreprocessing


class ImageError(ValueError):
    """A file that is not an image Pillow can read; the message names it."""


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImageError("reading images needs Pillow (pip install 'effv2[reference]')") from None
    return Image, ImageOps


def filters() -> dict[str, int]:
    """Spec interpolation name -> Pillow resampling filter."""
    Image, _ = _pil()
    R = Image.Resampling
    return {"nearest": R.NEAREST, "bilinear": R.BILINEAR, "bicubic": R.BICUBIC, "lanczos": R.LANCZOS,
            "box": R.BOX, "hamming": R.HAMMING}


def load_image(path: str | os.PathLike, channels: int = 3):
    """A Pillow image, EXIF orientation applied, converted to RGB (or L for 1-channel specs)."""
    Image, ImageOps = _pil()
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            return img.convert("RGB" if channels == 3 else "L")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, ValueError, SyntaxError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.replace(f" '{path}'", "").replace(f" {path}", "")  # Pillow repeats the path
        raise ImageError(f"{path}: not an image Pillow can read ({first})") from None


def _centre_crop(img, size: int):
    """torchvision's centre crop: offsets int(round((W - size) / 2)), int(round((H - size) / 2))."""
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def resize_and_crop(img, size: int, how: EvalPreprocessing):
    """The `size` x `size` Pillow image that `how` makes of `img` (rules in EvalPreprocessing)."""
    resample = filters()[how.interpolation]
    w, h = img.size
    if how.resize == "crop_then_resize":
        c = max(1, int(how.crop_fraction * min(h, w)))
        top, left = (h - c + 1) // 2, (w - c + 1) // 2
        return img.crop((left, top, left + c, top + c)).resize((size, size), resample)
    scale = math.floor(size / how.crop_fraction)
    if how.resize == "whole_image":
        img = img.resize((scale, scale), resample)
    else:  # shorter_side, as torchvision's resize with one int
        if w <= h:
            new = (scale, int(scale * h / w))
        else:
            new = (int(scale * w / h), scale)
        if new != (w, h):
            img = img.resize(new, resample)
    return _centre_crop(img, size) if img.size != (size, size) else img


def pixels(img, size: int, how: EvalPreprocessing) -> np.ndarray:
    """uint8 HWC pixels of the resized, cropped image."""
    arr = np.asarray(resize_and_crop(img, size, how), dtype=np.uint8)
    return arr if arr.ndim == 3 else arr[..., None]


def normalise(images: np.ndarray, spec: ArchitectureSpec, dtype="float32") -> np.ndarray:
    """uint8 NHWC -> float NCHW network input: normalised unless the model normalises itself."""
    x = np.asarray(images).astype(dtype)
    norm = spec.input.normalization
    if not norm.in_model:
        x = (x - np.asarray(norm.mean, dtype=dtype)) / np.asarray(norm.std, dtype=dtype)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def eval_size(spec: ArchitectureSpec, image_size: int | None = None) -> int:
    return int(image_size if image_size is not None else spec.input.eval_image_size)


def prepare(paths, spec: ArchitectureSpec, image_size: int | None = None, dtype="float32") -> np.ndarray:
    """Float NCHW batch of the files `paths`, by the spec's evaluation transform."""
    size = eval_size(spec, image_size)
    how = spec.input.eval_preprocessing
    batch = np.stack([pixels(load_image(p, spec.input.channels), size, how) for p in paths])
    return normalise(batch, spec, dtype)


__all__ = ["ImageError", "load_image", "resize_and_crop", "pixels", "normalise", "prepare", "eval_size", "filters"]
