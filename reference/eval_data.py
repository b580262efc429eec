"""Evaluation data, streamed batch by batch: a one-folder-per-class tree or an `.npz` file.

Memory is bounded by the batch: a folder is read file by file; an `.npz` member is read row
by row from the zip stream (compressed or not), never loaded whole. Every image goes through
the spec's evaluation transform (`effv2_reference.preprocess`).

Unreadable files inside a folder are skipped, named and counted (a stray README or a
truncated JPEG does not end a 50 000-image run); a folder with no readable image, a bad
`.npz` or labels out of range raise `EvalDataError` with one line naming the source.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from effv2_spec.architecture import ArchitectureSpec

from .labels import LabelError, class_index
from .preprocess import ImageError, load_image, pixels


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
                except ImageError as exc:
                    skipped.append(str(exc))
            empty = np.zeros((0, size, size, channels), np.uint8)
            yield Batch(np.stack(images) if images else empty, np.asarray(labels, np.int64), skipped)


class NpzSource:
    """An `.npz` with `images` (uint8 N x H x W x C, C = 1 or the spec's channels) and `labels`."""

    def __init__(self, path: Path, spec: ArchitectureSpec):
        self.path, self.spec, self.name = path, spec, str(path)
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                missing = [k for k in ("images", "labels") if f"{k}.npy" not in names]
                if missing:
                    raise EvalDataError(f"{path}: missing array(s) {', '.join(missing)}; an .npz needs 'images' "
                                        "(uint8 NHWC) and 'labels' (integers)")
                with zf.open("labels.npy") as f:
                    labels = np.load(f, allow_pickle=False)
                with zf.open("images.npy") as f:
                    shape, fortran, dtype = self._header(f)
        except EvalDataError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise EvalDataError(f"{path}: not a readable .npz file ({exc})") from None
        if dtype != np.uint8:
            raise EvalDataError(f"{path}: images: must be uint8 (0..255), got dtype {dtype}")
        if len(shape) != 4 or shape[3] not in (1, spec.input.channels) or 0 in shape:
            raise EvalDataError(f"{path}: images: must be N x H x W x C with C = 1 or {spec.input.channels}, "
                                f"got shape {shape}")
        if fortran:
            raise EvalDataError(f"{path}: images: must be stored in C order (np.savez of a C-contiguous array)")
        if labels.ndim != 1 or labels.shape[0] != shape[0] or not np.issubdtype(labels.dtype, np.integer):
            raise EvalDataError(f"{path}: labels: must be {shape[0]} integers (one per image), got "
                                f"shape {labels.shape} dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() >= spec.num_classes:
            raise EvalDataError(f"{path}: labels: must lie in [0, {spec.num_classes}) for the spec's num_classes, "
                                f"got values in [{labels.min()}, {labels.max()}]")
        self.shape, self.labels = shape, labels.astype(np.int64)

    @staticmethod
    def _header(f):
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)

    def __len__(self) -> int:
        return int(self.shape[0])

    def batches(self, batch: int, size: int) -> Iterator[Batch]:
        from PIL import Image

        how = self.spec.input.eval_preprocessing
        n, h, w, c = self.shape
        row = h * w * c
        with zipfile.ZipFile(self.path) as zf, zf.open("images.npy") as f:
            self._header(f)
            for start in range(0, n, batch):
                m = min(batch, n - start)
                raw = f.read(row * m)
                if len(raw) != row * m:
                    raise EvalDataError(f"{self.path}: images: the file ends after {start + len(raw) // row} "
                                        f"of {n} images (truncated)")
                chunk = np.frombuffer(raw, np.uint8).reshape(m, h, w, c)
                out = []
                for img in chunk:
                    pil = Image.fromarray(img[..., 0] if c == 1 else img)
                    if c != self.spec.input.channels:
                        pil = pil.convert("RGB")
                    out.append(pixels(pil, size, how))
                yield Batch(np.stack(out), self.labels[start:start + m])


def open_source(data: str | os.PathLike, spec: ArchitectureSpec, mapping_file=None):
    """A FolderSource or NpzSource by what `data` is."""
    p = Path(data)
    if p.is_dir():
        return FolderSource(p, spec, mapping_file)
    if not p.exists():
        raise EvalDataError(f"{data}: no such file or folder (use an image folder or an .npz file)")
    if mapping_file is not None:
        raise EvalDataError(f"{data}: --class-index applies to image folders, not to .npz files")
    return NpzSource(p, spec)


__all__ = ["EvalDataError", "Batch", "FolderSource", "NpzSource", "open_source"]
