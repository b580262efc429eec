"""An image folder tree to Parquet shards in the Hugging Face image-classification layout.

ROOT/<class>/<files> becomes one split, `train`; the ImageNet layout ROOT/train + ROOT/val (or
ROOT/validation) becomes `train` and `validation`, the validation labels following the training
set's class order. Each row holds a file's original bytes (nothing is re-encoded) and its label;
files the folder index cannot open are skipped and counted (folder_index.py).

Shards are written in the folder index's row order, row groups of ROW_GROUP rows, the image bytes
uncompressed (JPEG and PNG are compressed already; plain pages make a random read of one row group
cheap). Resumable: a plan file (PLAN_NAME) records which rows go to which shard and a fingerprint of
each shard's files; a run meeting the same plan keeps every shard that is complete (its footer reads,
its row count and fingerprint match) and writes the rest, each to a temporary name then renamed. A
plan that differs (the folder changed) is refused unless the caller overwrites.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .folder_index import FolderIndex, build_index

PLAN_NAME = "effv2-pack.json"
PLAN_FORMAT = 1
ROW_GROUP = 256
#: rows per shard: ~230 MB of ImageNet JPEGs (110 kB on average), near the hub's 500 MB limit per file
DEFAULT_SHARD_SIZE = 2048
SHARD_RE = re.compile(r"^(train|validation)-\d{5}-of-\d{5}\.parquet$")
_VALIDATION_FOLDERS = ("val", "validation")


@dataclass
class SplitResult:
    split: str
    images: int
    excluded: int
    shards: int
    kept: int = 0
    written: int = 0
    bytes_written: int = 0


@dataclass
class PackResult:
    out: str
    splits: list[SplitResult] = field(default_factory=list)
    seconds: float = 0.0


def _pyarrow(where):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{where}: needs pyarrow (pip install 'effv2[data]')") from None
    return pa, pq


def split_folders(folder: Path) -> dict[str, Path]:
    """{"train": ROOT/train, "validation": ROOT/val} for the ImageNet layout, else {"train": ROOT}."""
    if (folder / "train").is_dir():
        for v in _VALIDATION_FOLDERS:
            if (folder / v).is_dir():
                return {"train": folder / "train", "validation": folder / v}
        return {"train": folder / "train"}
    return {"train": folder}


def _shard_name(split: str, k: int, n: int) -> str:
    return f"{split}-{k:05d}-of-{n:05d}.parquet"


def _fingerprint(index: FolderIndex, rows: np.ndarray, labels: np.ndarray) -> str:
    """What a shard holds: its files' relative paths, labels and image sizes (a renamed, added, removed or
    resized file changes it; a file rewritten in place at the same size does not: use a fresh DIR then)."""
    h = hashlib.sha256()
    for r in rows.tolist():
        h.update(index.path_blob[int(index.path_offsets[r]):int(index.path_offsets[r + 1])].tobytes() + b"\0")
    for a in (labels, np.asarray(index.heights)[rows], np.asarray(index.widths)[rows]):
        h.update(np.ascontiguousarray(a, dtype="<i8").tobytes())
    return h.hexdigest()[:16]


def _labels(index: FolderIndex, classes: list[str], where: Path) -> np.ndarray:
    """The index's labels in `classes` order (a val/ tree follows train/'s classes, by name)."""
    known = {c: k for k, c in enumerate(classes)}
    unknown = [c for c in index.classes if c not in known]
    if unknown:
        raise DataError(f"{where}: class folder(s) {', '.join(unknown[:3])} not among the training set's "
                        f"{len(classes)} classes")
    mapping = np.asarray([known[c] for c in index.classes], dtype=np.int64)
    return mapping[np.asarray(index.labels)]


def make_plan(folder: Path, shard_size: int, refresh: bool = False) -> tuple[dict, dict[str, FolderIndex]]:
    """The plan (JSON-able) and each split's folder index."""
    indexes = {split: build_index(path, refresh=refresh) for split, path in split_folders(folder).items()}
    classes = list(indexes["train"].classes)
    plan = {"format": PLAN_FORMAT, "source": str(folder), "shard_size": shard_size, "classes": classes,
            "splits": {}}
    for split, index in indexes.items():
        labels = _labels(index, classes, Path(index.root))
        n = len(index)
        count = -(-n // shard_size)
        shards = []
        for k in range(count):
            rows = np.arange(k * shard_size, min(n, (k + 1) * shard_size))
            shards.append({"name": _shard_name(split, k, count), "first": int(rows[0]), "rows": int(rows.size),
                           "fingerprint": _fingerprint(index, rows, labels[rows])})
        plan["splits"][split] = {"root": index.root, "images": n, "excluded": len(index.excluded),
                                 "shards": shards}
    return plan, indexes


def _prepare_out(out: Path, plan: dict, overwrite: bool) -> None:
    """Create `out`, or accept it as the same plan's unfinished pack; anything else needs --overwrite."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    plan_file = out / PLAN_NAME
    if out.is_dir() and not overwrite:
        if plan_file.exists():
            try:
                old = json.loads(plan_file.read_text())
            except (OSError, ValueError) as exc:
                raise DataError(f"{plan_file}: not a readable pack plan ({exc}); pass --overwrite to start "
                                f"again") from None
            if old != plan:
                raise DataError(f"{out}: holds a pack of another plan ({_first_difference(old, plan)}); "
                                f"pass --overwrite to start again")
        elif any(not n.startswith(".") for n in os.listdir(out)):
            raise DataError(f"{out}: exists and is not an unfinished effv2 pack (no {PLAN_NAME}); choose a new "
                            f"folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(out):
        ours = SHARD_RE.match(name) or name == PLAN_NAME
        if (overwrite and ours) or _is_our_temp(name):
            (out / name).unlink()
    from effv2_spec.weights import atomic_write_bytes

    atomic_write_bytes(plan_file, json.dumps(plan, indent=1).encode())


def _is_our_temp(name: str) -> bool:
    """A shard's temporary file left by an interrupted run: .<shard name>.<pid>.tmp"""
    parts = name.split(".")
    return name.startswith(".") and name.endswith(".tmp") and bool(SHARD_RE.match(".".join(parts[1:-2])))


def _first_difference(old: dict, new: dict) -> str:
    if old.get("source") != new.get("source"):
        return f"source {old.get('source')} vs {new.get('source')}"
    if old.get("shard_size") != new.get("shard_size"):
        return f"shard size {old.get('shard_size')} vs {new.get('shard_size')}"
    if old.get("classes") != new.get("classes"):
        return "the class folders differ"
    for split, s in new["splits"].items():
        before = {x["name"]: x for x in old.get("splits", {}).get(split, {}).get("shards", [])}
        for shard in s["shards"]:
            if before.get(shard["name"]) != shard:
                return f"shard {shard['name']} would hold other files"
    return "the plan differs"


def _complete(pq, path: Path, shard: dict) -> bool:
    """True when `path` is the shard the plan describes: its footer reads, rows and fingerprint match."""
    try:
        f = pq.ParquetFile(path)
        ours = json.loads((f.schema_arrow.metadata or {}).get(b"effv2", b"{}"))
        return f.metadata.num_rows == shard["rows"] and ours.get("fingerprint") == shard["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError):  # pyarrow: kinds of these
        return False  # an unreadable or foreign file is simply written again


def _schema(pa, classes: list[str], split: str, fingerprint: str):
    features = {"image": {"_type": "Image"}, "label": {"names": list(classes), "_type": "ClassLabel"}}
    return pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      ("label", pa.int64())],
                     metadata={b"huggingface": json.dumps({"info": {"features": features}}).encode(),
                               b"effv2": json.dumps({"split": split, "fingerprint": fingerprint}).encode()})


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); it was indexed, then changed: "
                        f"run again to re-plan") from None


def _write_shard(pa, pq, out: Path, index: FolderIndex, labels: np.ndarray, shard: dict, classes: list[str],
                 split: str, pool: ThreadPoolExecutor) -> int:
    """Write one shard to a temporary name and rename it into place; returns its size in bytes."""
    target = out / shard["name"]
    tmp = out / f".{shard['name']}.{os.getpid()}.tmp"
    schema = _schema(pa, classes, split, shard["fingerprint"])
    codecs = {"image.bytes": "NONE", "image.path": "SNAPPY", "label": "SNAPPY"}
    try:
        # no dictionary for the images: distinct files never repeat, and a dictionary page would be tried,
        # filled and thrown away in every row group
        with pq.ParquetWriter(tmp, schema, compression=codecs, use_dictionary=["image.path", "label"]) as writer:
            for lo in range(shard["first"], shard["first"] + shard["rows"], ROW_GROUP):
                rows = range(lo, min(lo + ROW_GROUP, shard["first"] + shard["rows"]))
                paths = [index.paths.relative(r) for r in rows]
                blobs = list(pool.map(_read, [os.path.join(index.root, p) for p in paths]))
                images = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array(paths, pa.string())],
                                                    names=["bytes", "path"])
                table = pa.Table.from_arrays([images, pa.array(labels[list(rows)], pa.int64())], schema=schema)
                writer.write_table(table, row_group_size=ROW_GROUP)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target.stat().st_size


def pack_folder(folder: str | os.PathLike, out: str | os.PathLike, *, shard_size: int = DEFAULT_SHARD_SIZE,
                overwrite: bool = False, progress=None) -> PackResult:
    """Pack FOLDER into Parquet shards in OUT (see the module's docstring); `progress(text)` hears each shard."""
    start = time.perf_counter()
    if shard_size < 1:
        raise DataError(f"--shard-size: must be at least 1 row, got {shard_size}")
    pa, pq = _pyarrow(folder)
    src, dst = Path(folder), Path(out)
    if src.is_dir() and dst.resolve().is_relative_to(src.resolve()):
        raise DataError(f"{out}: lies inside {folder}; the shards would be read as a class folder")
    plan, indexes = make_plan(src.resolve() if src.is_dir() else src, shard_size)
    _prepare_out(dst, plan, overwrite)
    result = PackResult(str(dst))
    with ThreadPoolExecutor(max_workers=8) as pool:
        for split, s in plan["splits"].items():
            index = indexes[split]
            labels = _labels(index, plan["classes"], Path(index.root))
            r = SplitResult(split, s["images"], s["excluded"], len(s["shards"]))
            for shard in s["shards"]:
                if _complete(pq, dst / shard["name"], shard):
                    r.kept += 1
                    continue
                r.bytes_written += _write_shard(pa, pq, dst, index, labels, shard, plan["classes"], split, pool)
                r.written += 1
                if progress is not None:
                    progress(f"{shard['name']}: {shard['rows']} images")
            result.splits.append(r)
    result.seconds = time.perf_counter() - start
    return result


__all__ = ["DEFAULT_SHARD_SIZE", "PLAN_NAME", "ROW_GROUP", "PackResult", "SplitResult", "make_plan", "pack_folder",
           "split_folders"]
