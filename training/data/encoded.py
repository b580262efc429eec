"""`EncodedSource`: the shared half of sources whose rows are encoded image files (folders, Parquet shards).

A subclass says where row r's bytes are (`_where(r)`, and `_blob(r)` when they are not a file of
their own); decoding, crops at a reduced scale, the evaluation transform and subsets are here.
`rows` maps this view's rows onto the underlying source's, so a held-out split or a process's
shard is a view with no copy of anything but row numbers.

Pickling keeps only what reopens the source (a path, row numbers): a loader worker receives the
description, never images, and opens its own file handles.
"""

from __future__ import annotations

import copy

import numpy as np

from effv2_spec.architecture import EvalPreprocessing

from .decode import decode_image, decode_region, open_stored, stored_size
from .errors import DataError
from .sources import Source


class EncodedSource(Source):
    named_classes = True
    #: True where `_stored_size` comes from a record made earlier (the folder index), not from the bytes
    #: themselves: a decode then checks the file is still that size
    sizes_recorded = False

    def __init__(self, name: str, classes: list[str], labels: np.ndarray, *, num_classes: int, channels: int):
        if channels not in (1, 3):
            raise DataError(f"{name}: image files give 1 or 3 channels; the spec's input.channels is {channels}")
        if len(classes) > num_classes:
            raise DataError(f"{name}: {len(classes)} classes but the spec's num_classes is {num_classes}")
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise DataError(f"{name}: labels: must lie in [0, {num_classes}) for the spec's num_classes = "
                            f"{num_classes}, got values in [{int(labels.min())}, {int(labels.max())}]")
        self.name, self.classes, self.num_classes, self.channels = name, list(classes), num_classes, channels
        self.rows = np.arange(labels.shape[0], dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)

    # -- what a subclass supplies, by underlying row --
    def _where(self, r: int) -> str:
        raise NotImplementedError

    def _blob(self, r: int) -> bytes | None:
        return None

    def _stored_size(self, r: int) -> tuple[int, int]:
        return stored_size(self._where(r), self._blob(r))

    # -- the Source interface, by this view's row --
    def location(self, i: int) -> str:
        return self._where(int(self.rows[i]))

    def image(self, i: int) -> np.ndarray:
        r = int(self.rows[i])
        return decode_image(self._where(r), self.channels, self._blob(r), self._recorded_size(r))

    def image_size(self, i: int) -> tuple[int, int]:
        return self._stored_size(int(self.rows[i]))

    def crop(self, i: int, box: tuple[int, int, int, int], size: int) -> np.ndarray:
        r = int(self.rows[i])
        return decode_region(self._where(r), box, size, self.channels, self._blob(r), self._recorded_size(r))

    def _recorded_size(self, r: int) -> tuple[int, int] | None:
        return self._stored_size(r) if self.sizes_recorded else None

    def eval_pixels(self, i: int, size: int, how: EvalPreprocessing) -> np.ndarray:
        """uint8 (size, size, channels): the spec's evaluation transform, as `effv2 eval` applies it."""
        from PIL import ImageOps

        from ..preprocess import ImageError, eight_bit, pixels

        r = int(self.rows[i])
        where = self._where(r)
        with open_stored(where, self._blob(r)) as im:
            try:
                im = eight_bit(ImageOps.exif_transpose(im)).convert("L" if self.channels == 1 else "RGB")
                return pixels(im, size, how)
            except ImageError as exc:
                raise DataError(f"{where}: {exc}") from None
            except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
                raise DataError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from None

    def subset(self, index: np.ndarray, name: str) -> "EncodedSource":
        view = copy.copy(self)
        view.rows, view.labels, view.name = self.rows[index], self.labels[index], name
        return view
