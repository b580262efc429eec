"""`FolderSource`: an image folder tree ROOT/<class>/<file>, read file by file as training asks.

The file list, labels and sizes come from the folder index (folder_index.py: built once, in
parallel, cached, memory-mapped), so opening a tree of a million files costs seconds the second
time and no pixels are read up front. Files the index could not open are excluded and counted
there; a file that fails to decode later raises DataError naming it (the run stops, keeping its
last checkpoint; see docs/data.md).

`classes` maps the tree's folder names onto another set's label order (a `val/` tree onto
`train/`'s): a folder whose name is not in it is an error, a class with no folder is fine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .encoded import EncodedSource
from .errors import DataError
from .folder_index import build_index


class FolderSource(EncodedSource):
    sizes_recorded = True  # by the index

    def __init__(self, root: str | Path, *, num_classes: int, channels: int, classes: list[str] | None = None):
        self.root, self._names = str(root), classes
        self.index = build_index(root)
        labels = np.asarray(self.index.labels, dtype=np.int64)
        names = list(self.index.classes)
        if classes is not None:
            known = {c: k for k, c in enumerate(classes)}
            unknown = [c for c in names if c not in known]
            if unknown:
                raise DataError(f"{root}: class folder(s) {', '.join(unknown[:3])} not among the training set's "
                                f"{len(classes)} classes")
            labels = np.asarray([known[c] for c in names], dtype=np.int64)[labels] if labels.size else labels
            names = list(classes)
        if labels.size == 0:
            first = (f"; first: {self.index.excluded[0][0]}: {self.index.excluded[0][1]}" if self.index.excluded
                     else "")
            raise DataError(f"{root}: no readable image files ({len(self.index.excluded)} excluded{first})")
        super().__init__(str(root), names, labels, num_classes=num_classes, channels=channels)
        self._digest = self.index.digest

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("index")  # the worker loads the cached index (memory-mapped) instead of a pickled copy
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.index = build_index(self.root)
        if self.index.digest != state["_digest"]:  # the tree changed since the run opened it: other rows
            raise DataError(f"{self.root}: the folder changed since the run indexed it (files added, removed or "
                            "renamed); restart the run (or --resume) to index it again")

    def _where(self, r: int) -> str:
        return self.index.path(r)

    def _stored_size(self, r: int) -> tuple[int, int]:
        h, w = int(self.index.heights[r]), int(self.index.widths[r])
        return (w, h) if int(self.index.orientations[r]) in (5, 6, 7, 8) else (h, w)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self._digest.encode())  # the index's files, labels and sizes
        for a in (self.rows, self.labels):
            h.update(np.ascontiguousarray(a).astype("<i8").tobytes())
        return h.hexdigest()[:16]

    @property
    def excluded(self) -> int:
        """Files of the tree the index could not open (left out, listed by `effv2 data index`)."""
        return len(self.index.excluded)

    def describe(self) -> str:
        excluded = len(self.index.excluded)
        return (f"{self.name}: {len(self)} images in {len(set(self.labels.tolist()))} classes"
                + (f", {excluded} unreadable file(s) excluded (effv2 data index {self.root})" if excluded else ""))
