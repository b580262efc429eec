"""Data sources: what `--data` and `--val-data` name, opened as one `Source` interface.

A source has its labels in memory and gives images by row, at random: the embedded digits and
`.npz` files are held in memory (`Dataset`, checked once here so the loop never meets a wrong
shape, dtype or label); image folders (folder_source.py) and Parquet shards (parquet_source.py)
stay on disk and are decoded per sample, so memory does not grow with the data set. Problems
raise `DataError` with one line that names the file and the rule, which the CLI prints as is.

Held-out data: a source is split deterministically (a fixed generator, independent of the
training seed, stratified by class) so every run and every seed evaluates on the same images.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import numpy as np

from ..npzfile import NpzError, read_npz
from .errors import DataError
from .resize import resize_bilinear

#: fraction of each class kept out of training for evaluation
HELDOUT_FRACTION = 0.2
#: seed of the split: fixed, so the held-out set does not move with --seed
SPLIT_SEED = 20210401


class Source:
    """A data set with random access by row: labels in memory, images read when asked.

    Subclasses give `image(i)`; the rest has defaults that are right for in-memory arrays and are
    overridden where a file format can do better (a size from the header, a crop decoded at a
    reduced scale). Rows are 0..len-1 of this source; `subset` makes a view of some of them.
    """

    name: str
    classes: list[str]
    named_classes = False  # True when `classes` are names read from the data (folders, shard metadata)
    labels: np.ndarray  # (N,) int64
    num_classes: int
    channels: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def image(self, i: int) -> np.ndarray:
        """The original image of row i, uint8 (H, W, channels)."""
        raise NotImplementedError

    def image_size(self, i: int) -> tuple[int, int]:
        return tuple(self.image(i).shape[:2])

    def crop(self, i: int, box: tuple[int, int, int, int], size: int) -> np.ndarray:
        """The pixels of box (y, x, h, w) of row i's original, to be resized to `size`."""
        y, x, h, w = box
        return self.image(i)[y:y + h, x:x + w]

    def location(self, i: int) -> str:
        return f"{self.name}#{i}"

    def describe(self) -> str:
        return f"{self.name} ({len(self)} images, {len(set(self.labels.tolist()))} classes)"


class Dataset(Source):
    """Images held in memory as one uint8 NHWC array (the digits, an `.npz`): the stored pixels are the
    original. `origin` says how a worker process reloads it instead of receiving the pixels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, name: str,
                 origin: tuple | None = None):
        self.images, self.labels, self.num_classes, self.name = images, labels, num_classes, name
        self.channels = int(images.shape[3])
        self.classes = [str(k) for k in range(num_classes)] if num_classes <= 1000 else []
        self.origin = origin  # (loader name, args, rows or None)

    def __reduce__(self):
        if self.origin is None:
            return (Dataset, (self.images, self.labels, self.num_classes, self.name))
        return (_reload, (self.origin, self.name))

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def image_size(self, i: int) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])

    def subset(self, index: np.ndarray, name: str) -> "Dataset":
        origin = None
        if self.origin is not None:
            loader, args, rows = self.origin
            origin = (loader, args, np.asarray(index) if rows is None else rows[index])
        return Dataset(self.images[index], self.labels[index], self.num_classes, name, origin)

    def fingerprint(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()[:16]


def _reload(origin: tuple, name: str) -> Dataset:
    """A worker's copy of an in-memory set, read again from where the parent read it."""
    loader, args, rows = origin
    data = {"digits": load_digits, "npz": load_npz}[loader](*args)
    return data if rows is None else data.subset(rows, name)


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
    data = check_arrays(images, target, num_classes, channels, "digits")
    data.origin = ("digits", (size, channels, num_classes), None)
    return data


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
    data = check_arrays(arrays["images"], arrays["labels"], num_classes, channels, p)
    data.origin = ("npz", (p, num_classes, channels), None)
    return data


def open_source(source: str, *, num_classes: int, channels: int, digits_size: int = 32) -> Source:
    """'digits', an `.npz`, an image folder ROOT/<class>/..., a folder of `.parquet` shards or a glob of them."""
    if source == "digits":
        return load_digits(digits_size, channels, num_classes)
    if source == "":
        raise DataError("--data: an empty path names no file or folder")
    if glob.has_magic(source) or source.endswith(".parquet"):
        from .parquet_source import ParquetSource

        return ParquetSource.from_pattern(source, num_classes=num_classes, channels=channels)
    p = Path(source)
    if not p.exists():
        raise DataError(f"{source}: no such file or folder ({_KINDS})")
    if p.is_dir():
        return _open_folder(p, num_classes, channels)
    if not p.is_file():  # a FIFO or a device would block or never end
        raise DataError(f"{source}: not a regular file or folder ({_KINDS})")
    return load_npz(p, num_classes, channels)


_KINDS = "use 'digits', an .npz file, an image folder or Parquet shards"


def _open_folder(root: Path, num_classes: int, channels: int, classes: list[str] | None = None) -> Source:
    try:
        if any(f.suffix == ".parquet" for f in root.iterdir() if f.is_file()):
            from .parquet_source import ParquetSource

            return ParquetSource.from_pattern(str(root / "*.parquet"), num_classes=num_classes, channels=channels)
        from .folder_source import FolderSource

        return FolderSource(root, num_classes=num_classes, channels=channels, classes=classes)
    except OSError as exc:  # an unreadable sub-folder (permissions)
        raise DataError(f"{exc.filename or root}: cannot read ({exc.strerror or exc})") from None


#: names of a data set's validation split, as folders (ImageNet's val/) or as shard prefixes (the hub's)
VALIDATION_NAMES = ("val", "validation")


def open_split(data: str, val_data: str | None, *, num_classes: int, channels: int,
               digits_size: int = 32) -> tuple[Source, Source]:
    """(train, validation). The validation set is `val_data` when given; else the data set's own split
    (ROOT/train with ROOT/val, or train-*.parquet with validation-*.parquet shards); else a fixed
    `HELDOUT_FRACTION` of the training source's images, as `split` draws them."""
    options = dict(num_classes=num_classes, channels=channels)
    p = Path(data) if data not in ("", "digits") else None
    own = _own_splits(p, **options) if p is not None and p.is_dir() else None
    train = own[0] if own else open_source(data, digits_size=digits_size, **options)
    if val_data is not None:
        p_val = Path(val_data)
        if p_val.is_dir() and getattr(train, "named_classes", False) and not any(
                f.suffix == ".parquet" for f in p_val.iterdir()):
            val = _open_folder(p_val, classes=train.classes, **options)  # a folder tree maps names to the train set's
        else:
            val = open_source(val_data, digits_size=digits_size, **options)
        _check_same_classes(train, val)
        return train, val
    if own and own[1] is not None:
        return own
    return split(train)


def split_layout(root: Path) -> tuple[str | None, str | None]:
    """(train part, validation part) of a data set laid out with its splits, as a folder or a shard glob:
    ROOT/train with ROOT/val (or validation/) folders, or train-* with validation-* (or val-*) shards in ROOT;
    None for a part ROOT does not have. Training (`open_split`) and `effv2 eval` both read a layout here."""
    names = {f.name for f in root.iterdir()}
    if "train" in names and (root / "train").is_dir():
        return str(root / "train"), next((str(root / v) for v in VALIDATION_NAMES
                                          if v in names and (root / v).is_dir()), None)
    shards = [n for n in names if n.endswith(".parquet")]
    train = str(root / "train-*.parquet") if any(n.startswith("train-") for n in shards) else None
    return train, next((str(root / f"{v}-*.parquet") for v in VALIDATION_NAMES
                        if any(n.startswith(f"{v}-") for n in shards)), None)


def _own_splits(root: Path, **options) -> tuple[Source, Source | None] | None:
    """The data set's own (train, validation or None) by `split_layout`; None when ROOT has no train part."""
    train_part, val_part = split_layout(root)
    if train_part is None:
        return None
    if train_part.endswith(".parquet"):
        from .parquet_source import ParquetSource

        train = ParquetSource.from_pattern(train_part, **options)
        return train, ParquetSource.from_pattern(val_part, **options) if val_part else None
    train = _open_folder(Path(train_part), **options)
    return train, _open_folder(Path(val_part), classes=train.classes, **options) if val_part else None


def _check_same_classes(train: Source, val: Source) -> None:
    """A validation set read apart from its training set must name the same classes in the same order."""
    if not (getattr(train, "named_classes", False) and getattr(val, "named_classes", False)):
        return
    pairs = list(zip(val.classes, train.classes))
    first = next((k for k, (a, b) in enumerate(pairs) if a != b), None)
    if first is None and len(val.classes) > len(train.classes):
        first = len(train.classes)
    if first is not None:
        raise DataError(f"{val.name}: its classes differ from the training set's (class {first}: "
                        f"{_name(val.classes, first)} vs {_name(train.classes, first)}); labels would not match")


def _name(classes, k: int) -> str:
    return repr(classes[k]) if k < len(classes) else "none"


def split(data: Source, fraction: float = HELDOUT_FRACTION, seed: int = SPLIT_SEED) -> tuple[Source, Source]:
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
