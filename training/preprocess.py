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

import contextlib
import math
import os
import re
import stat
import warnings

import numpy as np

from effv2_spec.architecture import MAX_IMAGE_SIZE, ArchitectureSpec, EvalPreprocessing


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


#: what predict, eval and training read: raster formats only. Pillow would otherwise pick a plug-in by a file's
#: content, whatever its name, and some run external programs (EPS: Ghostscript) on untrusted files.
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


@contextlib.contextmanager
def open_raster(path: str | os.PathLike):
    """`Image.open` of a regular file in one of RASTER_FORMATS; ImageError for anything else.

    A FIFO or a device is refused before a byte is read (opened non-blocking, then checked), and an
    image past Pillow's pixel limit is a decompression bomb here, not a warning."""
    Image, _ = _pil()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageError(f"{path}: is a folder, not an image" if stat.S_ISDIR(mode) else
                         f"{path}: not a regular file (a pipe or a device is never read as an image)")
    with os.fdopen(fd, "rb") as f:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(f, formats=RASTER_FORMATS)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageError(f"{path}: image too large to decode safely ({exc})") from None
        with img:
            yield img


def eight_bit(img):
    """16-bit and 32-bit integer greyscale scaled from 0..65535, float greyscale from 0..1, to 8-bit 'L'.

    Pillow's convert() clips such images at 255 instead (a mid-grey 16-bit image becomes white)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        scale = 255 / 65535
    elif img.mode == "F":
        scale = 255.0
    else:
        return img
    Image, _ = _pil()
    values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0) * scale
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def load_image(path: str | os.PathLike, channels: int = 3):
    """A Pillow image, EXIF orientation applied, converted to RGB (or L for 1-channel specs)."""
    _, ImageOps = _pil()
    try:
        with open_raster(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            return eight_bit(img).convert("RGB" if channels == 3 else "L")
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, ValueError, SyntaxError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.replace(f" '{path}'", "").replace(f" {path}", "")  # Pillow repeats the path
        first = re.sub(r" <_io\.\w+ name=[^>]*>", "", first)  # ... and names the file object it was given
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
        img = img.resize(_bounded((scale, scale), size), resample)
    else:  # shorter_side, as torchvision's resize with one int
        if w <= h:
            new = (scale, int(scale * h / w))
        else:
            new = (int(scale * w / h), scale)
        if new != (w, h):
            img = img.resize(_bounded(new, size), resample)
    return _centre_crop(img, size) if img.size != (size, size) else img


#: pixels the resize before the centre crop may make (~800 MB of RGB): the largest eval size at crop_fraction
#: 0.5; a strip of extreme aspect ratio or a tiny crop fraction at a huge size is refused, not allocated
MAX_RESIZE_PIXELS = (2 * MAX_IMAGE_SIZE) ** 2


def _bounded(new: tuple[int, int], size: int) -> tuple[int, int]:
    if new[0] * new[1] > MAX_RESIZE_PIXELS:
        raise ImageError(f"the resize before the {size} px crop would make a {new[0]} x {new[1]} image "
                         f"(more than {MAX_RESIZE_PIXELS:,} pixels; an extreme aspect ratio?)")
    return new


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


__all__ = ["ImageError", "RASTER_FORMATS", "open_raster", "eight_bit", "load_image", "resize_and_crop", "pixels",
           "normalise", "prepare", "eval_size", "filters"]
