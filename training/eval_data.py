"""Evaluation data, streamed batch by batch: a one-folder-per-class tree, Parquet shards or an `.npz` file
(a data set laid out with its splits, ROOT/train + ROOT/val or train-* + validation-* shards: its validation split).

Memory is bounded by the batch: a folder is read file by file; an `.npz` member is read row
by row from the zip stream (compressed or not), never loaded whole. Every image goes through
the spec's evaluation transform (`effv2_train.preprocess`).

Unreadable files inside a folder are skipped, named and counted (a stray README or a
truncated JPEG does not end a 50 000-image run); a folder with no readable image, a bad
`.npz` or labels out of range raise `EvalDataError` with one line naming the source.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from effv2_spec.architecture import MAX_IMAGE_SIZE, ArchitectureSpec

from .labels import LabelError, class_index
from .npzfile import NpzError, check_magic, member_header, memory_budget, read_member
from .preprocess import ImageError, load_image, pixels


_BATCH_BYTES = 256 * 2**20  # raw image bytes one .npz batch may read at once


class EvalDataError(ValueError):
    """Bad evaluation data; one line naming the source and the rule."""


@dataclass
class Batch:
    images: np.ndarray  # (n, S, S, C) uint8 after the eval transform
    labels: np.ndarray  # (n,) int64
    skipped: list[str] = field(default_factory=list)  # one line per unreadable file of this batch


class FolderSource:
    """root/<class folder>/<image>; hidden files and folders are ignored."""

    def __init__(self, root: Path, spec: ArchitectureSpec, mapping_file=None):
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise EvalDataError(f"{root}: no class sub-folders (expected root/<class>/<image files>)")
        try:
            index = class_index(folders, spec.num_classes, mapping_file)
        except LabelError as exc:
            raise EvalDataError(str(exc)) from None
        self.samples = [(p, index[name]) for name in folders for p in sorted((root / name).iterdir())
                        if p.is_file() and not p.name.startswith(".")]
        if not self.samples:
            raise EvalDataError(f"{root}: the class folders hold no files")
        self.name, self.spec = str(root), spec

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self, batch: int, size: int) -> Iterator[Batch]:
        how, channels = self.spec.input.eval_preprocessing, self.spec.input.channels
        for start in range(0, len(self.samples), batch):
            images, labels, skipped = [], [], []
            for path, label in self.samples[start:start + batch]:
                try:
                    images.append(pixels(load_image(path, channels), size, how))
                    labels.append(label)
                except ImageError as exc:  # load_image names the file; the resize does not know it
                    skipped.append(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}")
            empty = np.zeros((0, size, size, channels), np.uint8)
            yield Batch(np.stack(images) if images else empty, np.asarray(labels, np.int64), skipped)


class NpzSource:
    """An `.npz` with `images` (uint8 N x H x W x C, C = 1 or the spec's channels) and `labels`."""

    def __init__(self, path: Path, spec: ArchitectureSpec):
        self.path, self.spec, self.name = path, spec, str(path)
        try:  # every size is checked against the member's real size and a memory budget before it is used
            check_magic(path)
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                missing = [k for k in ("images", "labels") if f"{k}.npy" not in names]
                if missing:
                    raise EvalDataError(f"{path}: missing array(s) {', '.join(missing)}; an .npz needs 'images' "
                                        "(uint8 NHWC) and 'labels' (integers)")
                shape, dtype, _, fortran, self._offset = member_header(zf, zf.getinfo("images.npy"))
                self._check_images(shape, dtype, fortran)
                labels_header = member_header(zf, zf.getinfo("labels.npy"))
                lshape, ldtype, lbytes = labels_header[:3]
                if len(lshape) != 1 or lshape[0] != shape[0] or ldtype.kind not in "iu":
                    raise EvalDataError(f"{path}: labels: must be {shape[0]} integers (one per image), got "
                                        f"shape {lshape} dtype {ldtype}")
                if lbytes > memory_budget():
                    raise EvalDataError(f"{path}: labels: {lbytes:,} bytes do not fit in half of this machine's memory")
                labels = read_member(zf, zf.getinfo("labels.npy"), labels_header)
        except EvalDataError:
            raise
        except NpzError as exc:
            raise EvalDataError(f"{path}: {exc}") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError,
                RuntimeError, zlib.error) as exc:
            raise EvalDataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
        if labels.min() < 0 or labels.max() >= spec.num_classes:
            raise EvalDataError(f"{path}: labels: must lie in [0, {spec.num_classes}) for the spec's num_classes, "
                                f"got values in [{labels.min()}, {labels.max()}]")
        self.shape, self.labels = shape, labels.astype(np.int64)

    def _check_images(self, shape, dtype, fortran) -> None:
        path, channels = self.path, self.spec.input.channels
        if dtype != np.uint8:
            raise EvalDataError(f"{path}: images: must be uint8 (0..255), got dtype {dtype}")
        if len(shape) != 4 or shape[3] not in (1, channels) or 0 in shape:
            raise EvalDataError(f"{path}: images: must be N x H x W x C with C = 1 or {channels}, got shape {shape}")
        if max(shape[1:3]) > MAX_IMAGE_SIZE:
            raise EvalDataError(f"{path}: images: height and width must be at most {MAX_IMAGE_SIZE}, got {shape[1:3]}")
        if fortran:
            raise EvalDataError(f"{path}: images: must be stored in C order (np.savez of a C-contiguous array)")

    def __len__(self) -> int:
        return int(self.shape[0])

    def batches(self, batch: int, size: int) -> Iterator[Batch]:
        from PIL import Image

        how = self.spec.input.eval_preprocessing
        n, h, w, c = self.shape
        row = h * w * c
        batch = max(1, min(batch, _BATCH_BYTES // row))  # a batch of the largest images stays near _BATCH_BYTES
        with zipfile.ZipFile(self.path) as zf, zf.open("images.npy") as f:
            f.read(self._offset)
            for start in range(0, n, batch):
                m = min(batch, n - start)
                raw = f.read(row * m)  # bounded: zipfile never inflates more than it is asked for
                if len(raw) != row * m:
                    raise EvalDataError(f"{self.path}: images: the file ends after {start + len(raw) // row} "
                                        f"of {n} images (truncated)")
                chunk = np.frombuffer(raw, np.uint8).reshape(m, h, w, c)
                out = []
                for i, img in enumerate(chunk):
                    pil = Image.fromarray(img[..., 0] if c == 1 else img)
                    if c != self.spec.input.channels:
                        pil = pil.convert("RGB")
                    try:
                        out.append(pixels(pil, size, how))
                    except ImageError as exc:
                        raise EvalDataError(f"{self.path}: images[{start + i}]: {exc}") from None
                yield Batch(np.stack(out), self.labels[start:start + m])


class ShardSource:
    """Parquet shards (a folder of them, its validation-* shards when it has train-* ones too, or a glob)."""

    def __init__(self, pattern: str, spec: ArchitectureSpec):
        from .data.errors import DataError
        from .data.parquet_source import ParquetSource

        try:
            self.source = ParquetSource.from_pattern(pattern, num_classes=spec.num_classes,
                                                     channels=spec.input.channels)
        except DataError as exc:
            raise EvalDataError(str(exc)) from None
        self.name, self.spec = pattern, spec

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, batch: int, size: int) -> Iterator[Batch]:
        from .data.errors import DataError

        how, channels = self.spec.input.eval_preprocessing, self.spec.input.channels
        for start in range(0, len(self.source), batch):
            images, labels, skipped = [], [], []
            for i in range(start, min(start + batch, len(self.source))):
                try:
                    images.append(self.source.eval_pixels(i, size, how))
                    labels.append(int(self.source.labels[i]))
                except DataError as exc:  # named by shard and row, skipped and counted like a bad file
                    skipped.append(str(exc))
            empty = np.zeros((0, size, size, channels), np.uint8)
            yield Batch(np.stack(images) if images else empty, np.asarray(labels, np.int64), skipped)


def _validation_split(p: Path) -> str | None:
    """What `effv2 eval` reads of a folder: the validation part of a data set laid out with its splits
    (data.sources.split_layout), else every shard of a shard folder, else None (the folder itself)."""
    from .data.sources import split_layout

    _, validation = split_layout(p)
    if validation is None and any(f.suffix == ".parquet" for f in p.iterdir() if f.is_file()):
        return str(p / "*.parquet")
    return validation


def open_source(data: str | os.PathLike, spec: ArchitectureSpec, mapping_file=None):
    """A FolderSource, ShardSource or NpzSource by what `data` is (a data set with splits: its validation split)."""
    import glob

    if not str(data):
        raise EvalDataError("--data '': an empty path names no file or folder")
    if glob.has_magic(str(data)) or str(data).endswith(".parquet"):
        return ShardSource(str(data), spec)
    p = Path(data)
    if p.is_dir():
        split = _validation_split(p)
        if split is not None and split.endswith(".parquet"):
            return ShardSource(split, spec)
        return FolderSource(Path(split) if split else p, spec, mapping_file)
    if not p.exists():
        raise EvalDataError(f"{data}: no such file or folder (use an image folder, Parquet shards or an .npz file)")
    if not p.is_file():  # a FIFO or a device would block or never end
        raise EvalDataError(f"{data}: not a regular file or folder (use an image folder, Parquet shards "
                            "or an .npz file)")
    if mapping_file is not None:
        raise EvalDataError(f"{data}: --class-index applies to image folders, not to .npz files")
    return NpzSource(p, spec)


__all__ = ["EvalDataError", "Batch", "FolderSource", "NpzSource", "ShardSource", "open_source"]
