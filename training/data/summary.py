"""What `effv2 data index` reports about a data set, as data: per split, class counts, image sizes, modes and
formats from the headers (the folder index, or each Parquet row's bytes), the files excluded as unreadable and,
with `verify`, those whose pixel data fails to decode (which would stop a training run)."""

from __future__ import annotations

import time
from pathlib import Path


def _stats(values) -> dict:
    import numpy as np

    v = np.asarray(values)
    if v.size == 0:
        return {"min": None, "median": None, "max": None}
    return {"min": int(v.min()), "median": float(np.median(v)), "max": int(v.max())}


def _split_summary(split: str, where: str, classes: list[str], labels, heights, widths, modes: dict,
                   formats: dict, excluded: list, seconds: float, cached: bool) -> dict:
    import numpy as np

    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    return {"split": split, "source": where, "images": int(counts.sum()),
            "classes": [{"name": c, "count": int(n)} for c, n in zip(classes, counts.tolist())],
            "height": _stats(heights), "width": _stats(widths), "modes": modes, "formats": formats,
            "excluded": [{"path": p, "reason": r} for p, r in excluded], "seconds": round(seconds, 3),
            "cached": cached}


def _folder_summaries(root: Path, refresh: bool, verify: bool) -> list[dict]:
    from .folder_index import build_index
    from .pack import split_folders

    out = []
    for split, path in split_folders(root).items():
        ix = build_index(path, refresh=refresh)
        out.append(_split_summary(split, ix.root, list(ix.classes), ix.labels, ix.heights, ix.widths, ix.modes,
                                  ix.formats, ix.excluded, ix.seconds, ix.cached))
        if verify:
            out[-1]["damaged"] = _damaged_files(ix)
    return out


def _decode_problem(path: str) -> str | None:
    """None when the whole image decodes, else why not (one line)."""
    from ..preprocess import ImageError, open_raster
    from .folder_index import PILLOW_ERRORS

    try:
        with open_raster(path) as im:
            im.load()
    except ImageError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except PILLOW_ERRORS as exc:
        return _reason(exc)
    return None


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _damaged_files(ix) -> list[dict]:
    """Indexed files whose pixel data fails to decode (the index reads headers only), decoded in threads:
    Pillow's decoders release the GIL."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        problems = list(pool.map(_decode_problem, ix.paths, chunksize=64))
    return [{"path": p, "reason": r} for p, r in zip(ix.paths, problems) if r is not None]


def _shard_groups(source: str) -> dict[str, list[str]]:
    """Shards of SOURCE (a folder of .parquet files, one file or a glob) grouped by split name prefix."""
    import glob

    p = Path(source)
    files = sorted(glob.glob(source)) if glob.has_magic(source) else (
        sorted(str(f) for f in p.glob("*.parquet")) if p.is_dir() else [source])
    groups: dict[str, list[str]] = {}
    for f in files:
        name = Path(f).name
        split = next((s for s in ("train", "validation", "val", "test") if name.startswith(f"{s}-")), "all")
        groups.setdefault("validation" if split == "val" else split, []).append(f)
    return groups


def _shard_summary(split: str, shards: list[str], verify: bool) -> dict:
    """Headers of every image in `shards`: each row group is read, each image's header opened from its bytes."""
    import json

    from .errors import DataError

    pq = _pyarrow()
    start = time.perf_counter()
    found = {"labels": [], "heights": [], "widths": [], "modes": {}, "formats": {}, "excluded": [], "damaged": []}
    names = None
    for shard in shards:
        row = 0
        try:
            f = pq.ParquetFile(shard)
            meta = json.loads((f.schema_arrow.metadata or {}).get(b"huggingface", b"{}"))
            names = names or meta.get("info", {}).get("features", {}).get("label", {}).get("names")
            for g in range(f.num_row_groups):  # one row group in memory at a time
                row = _scan_rows(f.read_row_group(g, columns=["image", "label"]), shard, row, found, verify)
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise DataError(f"{shard}: not a readable Parquet shard with image and label columns "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not names:
        names = [str(k) for k in range(max(found["labels"], default=-1) + 1)]
    where = shards[0] if len(shards) == 1 else f"{Path(shards[0]).parent}/{split}-*.parquet ({len(shards)} shards)"
    summary = _split_summary(split, where, list(names), found["labels"], found["heights"], found["widths"],
                             dict(sorted(found["modes"].items())), dict(sorted(found["formats"].items())),
                             found["excluded"], time.perf_counter() - start, False)
    if verify:
        summary["damaged"] = found["damaged"]
    return summary


def _scan_rows(table, shard: str, row: int, found: dict, verify: bool) -> int:
    """Add the headers of one row group's images to `found` (and, with `verify`, the rows whose pixel data fails
    to decode); returns the next row number of the shard."""
    import io

    from PIL import Image

    from ..preprocess import RASTER_FORMATS
    from .folder_index import PILLOW_ERRORS

    for image, label in zip(table.column("image").to_pylist(), table.column("label").to_pylist()):
        try:
            with Image.open(io.BytesIO((image or {}).get("bytes") or b""), formats=RASTER_FORMATS) as im:
                (w, h), mode, fmt = im.size, im.mode, str(im.format)
                if verify:
                    try:
                        im.load()
                    except PILLOW_ERRORS as exc:
                        found["damaged"].append({"path": f"{shard}#{row}", "reason": _reason(exc)})
        except PILLOW_ERRORS as exc:
            found["excluded"].append((f"{shard}#{row}", f"not an image Pillow can read ({type(exc).__name__})"))
        else:
            found["labels"].append(int(label))
            found["heights"].append(h)
            found["widths"].append(w)
            found["modes"][mode] = found["modes"].get(mode, 0) + 1
            found["formats"][fmt] = found["formats"].get(fmt, 0) + 1
        row += 1
    return row


def _pyarrow():
    from .errors import DataError

    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("needs pyarrow (pip install 'effv2[data]')") from None
    return pq


def summarise(source: str, refresh: bool = False, verify: bool = False) -> dict:
    """What `effv2 data index` prints, as data."""
    import glob

    from .errors import DataError

    p = Path(source)
    if source == "":
        raise DataError("'': an empty path names no file or folder")
    parquet = glob.has_magic(source) or source.endswith(".parquet") or (
        p.is_dir() and any(f.suffix == ".parquet" for f in p.iterdir() if f.is_file()))
    if parquet:
        groups = _shard_groups(source)
        if not groups:
            raise DataError(f"{source}: no Parquet shards match")
        return {"source": source, "kind": "parquet",
                "splits": [_shard_summary(split, files, verify) for split, files in groups.items()]}
    if not p.exists():
        raise DataError(f"{source}: no such file or folder")
    if not p.is_dir():
        raise DataError(f"{source}: not a folder or Parquet shards; give an image folder ROOT/<class>/..., "
                        f"ROOT/train + ROOT/val, or .parquet shards")
    return {"source": source, "kind": "folder", "splits": _folder_summaries(p, refresh, verify)}
