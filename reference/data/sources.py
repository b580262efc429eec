"""Data sources: the embedded digits, `.npz` files and one-folder-per-class image trees.

Every source gives a `Dataset`: uint8 images NHWC and int64 labels, checked once here so
the training loop never meets a wrong shape, dtype or label. Problems raise `DataError`
with one line that names the file and the rule, which the CLI prints as is.

Held-out data: a source is split deterministically (a fixed generator, independent of the
training seed, stratified by class) so every run and every seed evaluates on the same images.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..npzfile import NpzError, read_npz
from .resize import resize_bilinear

#: fraction of each class kept out of training for evaluation
HELDOUT_FRACTION = 0.2
#: seed of the split: fixed, so the held-out set does not move with --seed
SPLIT_SEED = 20210401
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class DataError(ValueError):
    """Bad input data: the message is one line, `SOURCE: rule`."""


@dataclass
class Dataset:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray, name: str) -> "Dataset":
        return Dataset(self.images[index], self.labels[index], self.num_classes, name)


def check_arrays(images, labels, num_classes: int, channels: int, source: str) -> Dataset:
    """Validate uint8 NHWC images and integer labels against the spec; adapt 1 channel to `channels`."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8:
        raise DataError(f"{source}: images: must be uint8 (0..255), got dtype {images.dtype}")
    if images.ndim != 4:
        raise DataError(f"{source}: images: must be 4-D NHWC (N, H, W, C), got shape {images.shape}")
    n, h, w, c = images.shape
    if n == 0 or h == 0 or w == 0:
        raise DataError(f"{source}: images: empty, shape {images.shape}")
    if c not in (1, channels):
        raise DataError(f"{source}: images: last axis must be the channels (1 or {channels}, as the spec's "
                        f"input.channels), got shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{source}: labels: must be 1-D with one label per image ({n}), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: labels: must be integers, got dtype {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{source}: labels: must lie in [0, {num_classes}) for the spec's num_classes = "
                        f"{num_classes}, got values in [{lo}, {hi}]")
    if c != channels:
        images = np.repeat(images, channels, axis=3)  # grayscale into every channel the network expects
    return Dataset(np.ascontiguousarray(images), labels.astype(np.int64), num_classes, source)


def load_digits(size: int = 32, channels: int = 3, num_classes: int = 10) -> Dataset:
    """scikit-learn's handwritten digits (1797 images, 8x8, values 0..16) as uint8, upscaled to size x size."""
    if num_classes < 10:
        raise DataError(f"digits: has 10 classes but the spec's num_classes is {num_classes}")
    pixels, target = _digits_table()
    gray = pixels.reshape(-1, 8, 8) * (255.0 / 16.0)  # (N, 8, 8) in 0..255
    up = resize_bilinear(gray, size)
    images = np.clip(np.rint(up), 0, 255).astype(np.uint8)[..., None]
    return check_arrays(images, target, num_classes, channels, "digits")


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """(pixels (1797, 64) float64 in 0..16, labels int64) from the table scikit-learn ships, read without
    importing scikit-learn (whose import takes longer than a short training run's first stage)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    table = (Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
             if spec is not None and spec.submodule_search_locations else None)
    if table is None or not table.is_file():
        raise DataError("digits: the embedded data set needs scikit-learn (pip install 'effv2[reference]')")
    with gzip.open(table, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


def load_npz(path: str | os.PathLike, num_classes: int, channels: int) -> Dataset:
    """An `.npz` with `images` (uint8 N x H x W x C) and `labels` (integers in [0, num_classes))."""
    p = str(path)
    try:
        arrays = read_npz(p)
    except NpzError as exc:
        raise DataError(f"{p}: not a readable .npz file: {exc}") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc})") from None
    missing = [k for k in ("images", "labels") if k not in arrays]
    if missing:
        raise DataError(f"{p}: missing array(s) {', '.join(missing)}; an .npz needs 'images' (uint8 NHWC) "
                        f"and 'labels' (found: {', '.join(sorted(arrays)) or 'none'})")
    return check_arrays(arrays["images"], arrays["labels"], num_classes, channels, p)


def load_folder(path: str | os.PathLike, num_classes: int, channels: int, size: int) -> Dataset:
    """root/<class>/<image>: classes are the sorted sub-folder names; images resized to size x size."""
    try:
        import PIL.Image  # noqa: F401  (only to say early that Pillow is missing)
    except ImportError:
        raise DataError(f"{path}: reading an image folder needs Pillow (pip install 'effv2[reference]')") from None
    root = Path(path)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders; expected root/<class name>/<image files>")
    if len(classes) > num_classes:
        raise DataError(f"{root}: {len(classes)} class folders but the spec's num_classes is {num_classes}")
    mode = "L" if channels == 1 else "RGB"
    if channels not in (1, 3):
        raise DataError(f"{root}: image folders give 1 or 3 channels; the spec's input.channels is {channels}")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{root / name}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            arr = _read_image(f, mode, size)
            images.append(arr if arr.ndim == 3 else arr[..., None])
            labels.append(label)
    return check_arrays(np.stack(images), np.asarray(labels, dtype=np.int64), num_classes, channels, str(root))


def _read_image(f: Path, mode: str, size: int) -> np.ndarray:
    """One image as uint8 size x size; anything Pillow cannot or should not decode is a DataError.

    The same opener as predict and eval (raster formats and regular files only; past Pillow's pixel
    limit a decompression bomb, not a warning), and 16-bit or float images scaled, not clipped."""
    from PIL import Image

    from ..preprocess import ImageError, eight_bit, open_raster

    try:
        with open_raster(f) as im:
            im = eight_bit(im).convert(mode).resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except ImageError as exc:
        raise DataError(str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as exc:  # Pillow's decoder errors
        raise DataError(f"{f}: not a readable image ({type(exc).__name__}: {exc})") from None


def load_source(source: str, num_classes: int, channels: int, size: int) -> Dataset:
    """'digits', a .npz file or an image folder, by what `source` is."""
    if source == "digits":
        return load_digits(size, channels, num_classes)
    if source == "":
        raise DataError("--data: an empty path names no file or folder")
    p = Path(source)
    if not p.exists():
        raise DataError(f"{source}: no such file or folder (use 'digits', an .npz file or an image folder)")
    if p.is_dir():
        try:
            return load_folder(p, num_classes, channels, size)
        except OSError as exc:  # an unreadable sub-folder (permissions)
            raise DataError(f"{exc.filename or source}: cannot read ({exc.strerror or exc})") from None
    if not p.is_file():  # a FIFO or a device would block or never end
        raise DataError(f"{source}: not a regular file or folder (use 'digits', an .npz file or an image folder)")
    return load_npz(p, num_classes, channels)


def split(data: Dataset, fraction: float = HELDOUT_FRACTION, seed: int = SPLIT_SEED) -> tuple[Dataset, Dataset]:
    """(train, held-out): `fraction` of each class held out, chosen by a fixed generator."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(data.labels):  # the classes present: num_classes may be far larger
        idx = np.flatnonzero(data.labels == c)
        if idx.size < 2:
            continue  # a lone example trains; it cannot also be held out
        k = max(1, int(round(idx.size * fraction)))
        held.append(rng.permutation(idx)[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(data), dtype=bool)
    mask[held_idx] = False
    train_idx = np.flatnonzero(mask)
    if held_idx.size == 0 or train_idx.size == 0:
        raise DataError(f"{data.name}: too few images ({len(data)}) to split into train and held-out sets")
    return data.subset(train_idx, f"{data.name}:train"), data.subset(held_idx, f"{data.name}:heldout")
