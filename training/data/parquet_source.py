"""`ParquetSource`: Parquet shards of encoded images, in the Hugging Face image-classification layout.

Columns `image` (a struct whose `bytes` field holds the encoded file; `path` is ignored) and
`label` (integers); class names from the `huggingface` schema metadata (a ClassLabel's `names`)
when present. A glob of shards, sorted by name, is one data set; rows are numbered shard by
shard. Labels are read once (one small column); images are read at random by row: the row
group holding a row is read, memory-mapped, and the last few are kept (a batch's rows often
share one). `effv2 data pack` writes row groups of 256 rows with the image column uncompressed,
which keeps that read small.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import OrderedDict

import numpy as np

from .encoded import EncodedSource
from .errors import DataError

#: row groups kept decoded per process (each is at most a few hundred encoded images)
ROW_GROUP_CACHE = 4


def _pyarrow(where: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{where}: reading Parquet shards needs pyarrow (pip install 'effv2[data]')") from None
    return pq


class ParquetSource(EncodedSource):
    @classmethod
    def from_pattern(cls, pattern: str, *, num_classes: int, channels: int) -> "ParquetSource":
        shards = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        shards = [s for s in shards if os.path.isfile(s)]
        if not shards:
            raise DataError(f"{pattern}: no Parquet shards match")
        return cls(shards, num_classes=num_classes, channels=channels, name=pattern)

    def __init__(self, shards: list[str], *, num_classes: int, channels: int, name: str):
        pq = _pyarrow(name)
        self.shards = list(shards)
        starts, group_rows, labels, classes = [0], [], [], None
        for path in self.shards:
            meta, shard_labels, names = _read_shard_head(pq, path)
            labels.append(shard_labels)
            group_rows.append(np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]))
            starts.append(starts[-1] + meta.num_rows)
            classes = classes or names
        self._starts = np.asarray(starts, dtype=np.int64)
        self._group_rows = group_rows
        all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        if all_labels.size == 0:
            raise DataError(f"{name}: the shards hold no rows")
        named = classes is not None
        classes = classes or [str(k) for k in range(int(all_labels.max()) + 1)]
        super().__init__(name, classes, all_labels, num_classes=num_classes, channels=channels)
        self.named_classes = named
        self._files, self._groups = {}, OrderedDict()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_groups"] = {}, OrderedDict()  # a worker opens its own handles
        return state

    def _locate(self, r: int) -> tuple[int, int, int]:
        s = int(np.searchsorted(self._starts, r, side="right")) - 1
        local = r - int(self._starts[s])
        g = int(np.searchsorted(self._group_rows[s], local, side="right")) - 1
        return s, g, local - int(self._group_rows[s][g])

    def _where(self, r: int) -> str:
        s, _, _ = self._locate(r)
        return f"{self.shards[s]}#{r - int(self._starts[s])}"

    def _blob(self, r: int) -> bytes:
        s, g, k = self._locate(r)
        column = self._groups.get((s, g))
        if column is None:
            column = self._read_group(s, g)
        else:
            self._groups.move_to_end((s, g))
        value = column[k].as_py()
        blob = value.get("bytes") if isinstance(value, dict) else value
        if not isinstance(blob, (bytes, bytearray)) or not blob:
            raise DataError(f"{self._where(r)}: the image column holds no encoded bytes")
        return bytes(blob)

    def _read_group(self, s: int, g: int):
        pq = _pyarrow(self.shards[s])
        f = self._files.get(s)
        try:
            if f is None:
                f = self._files[s] = pq.ParquetFile(self.shards[s], memory_map=True)
            column = f.read_row_group(g, columns=["image"]).column("image")
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid / ArrowIOError derive from these
            raise DataError(f"{self.shards[s]}: row group {g} cannot be read ({type(exc).__name__}: {exc})") from None
        self._groups[(s, g)] = column
        while len(self._groups) > ROW_GROUP_CACHE:
            self._groups.popitem(last=False)
        return column

    def fingerprint(self) -> str:
        h = hashlib.sha256("\n".join(os.path.basename(s) for s in self.shards).encode())
        for a in (self._starts, self.rows, self.labels):
            h.update(np.ascontiguousarray(a).astype("<i8").tobytes())
        return h.hexdigest()[:16]


def _read_shard_head(pq, path: str):
    """(metadata, labels int64, class names or None) of one shard; DataError for anything unusable."""
    try:
        f = pq.ParquetFile(path, memory_map=True)
        schema = f.schema_arrow
        for column in ("image", "label"):
            if column not in schema.names:
                raise DataError(f"{path}: no '{column}' column (an image-classification shard has 'image' "
                                f"with the encoded bytes and 'label'; found {', '.join(schema.names)})")
        labels = f.read(columns=["label"]).column("label").to_numpy(zero_copy_only=False)
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise DataError(f"{path}: label: must be non-negative integers, got {labels.dtype}")
    return f.metadata, labels.astype(np.int64), _class_names(schema.metadata or {})


def _class_names(metadata: dict) -> list[str] | None:
    try:
        info = json.loads(metadata[b"huggingface"])
        names = info["info"]["features"]["label"]["names"]
    except (KeyError, TypeError, ValueError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None
