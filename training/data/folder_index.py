"""The index of an image folder tree ROOT/<class>/<files>: paths, labels and image sizes, cached.

Classes are the sorted non-hidden sub-folders of ROOT; each class's files are its non-hidden
entries, sorted, whatever their extension (the format is decided by content, as Pillow does).
Each file's header is read once, in a thread pool (opening a header is mostly I/O), for its
height, width, mode and EXIF orientation; nothing is decoded. Files Pillow cannot open are
excluded and listed with a one-line reason, so a corrupt file among a million never reaches
training and never makes the result depend on which worker met it.

The index is cached as .npy files plus a small JSON under $EFFV2_CACHE_DIR (default
~/.cache/effv2)/index/<16 hex of the root's path>, written to a temporary folder and renamed
into place, and loaded memory-mapped so worker processes share its pages. It is reused while
the mtime of ROOT and of every class folder is unchanged (adding, removing or renaming a file
changes its folder's mtime); a file rewritten in place keeps its folder's mtime, so use
refresh=True after editing images. Folder mtimes tick coarsely (a few ms) and a file may land
in a folder while it is being listed, so, as git does with its index, a cache whose folders
changed within RACY_NS of their listing is trusted only after the folders are listed again and
hold the same names (no header is read again).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError

#: bumped whenever the cached layout or what is indexed changes: an older cache is rebuilt
FORMAT_VERSION = 1
_ARRAYS = ("path_blob", "path_offsets", "labels", "heights", "widths", "orientations")
#: files per task of the thread pool: large enough that scheduling costs nothing next to the opens
_CHUNK = 256
#: a folder modified this close to (or after) its listing may have changed unseen in the same mtime tick
RACY_NS = 2_000_000_000
#: what Pillow raises on a damaged or foreign header (UnidentifiedImageError is an OSError); anything
#: else is a bug to surface, not a file to exclude
PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError,
                  MemoryError, ZeroDivisionError)


class _Paths:
    """The file paths of an index as a read-only sequence of str, decoded from one byte blob on access.

    1.28 M Python strings would cost ~150 MB in every worker; the blob is one shared memory map."""

    def __init__(self, root: str, blob: np.ndarray, offsets: np.ndarray):
        self._root, self._blob, self._offsets = root, blob, offsets

    def __len__(self) -> int:
        return int(self._offsets.shape[0]) - 1

    def relative(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(f"path index {i} out of range for {len(self)} files")
        i %= len(self)
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        return os.fsdecode(self._blob[lo:hi].tobytes())

    def __getitem__(self, i: int) -> str:
        return os.path.join(self._root, self.relative(int(i)))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


@dataclass
class FolderIndex:
    """The readable images of ROOT/<class>/..., in class then file-name order."""

    root: str  # absolute, symlinks resolved
    classes: list[str]
    path_blob: np.ndarray  # uint8: every relative path "<class>/<file>", os.fsencode'd, end to end
    path_offsets: np.ndarray  # int64 (N + 1,): path i is path_blob[offsets[i]:offsets[i + 1]]
    labels: np.ndarray  # int64 (N,)
    heights: np.ndarray  # int32 (N,): as stored in the file, before any EXIF rotation
    widths: np.ndarray  # int32 (N,)
    orientations: np.ndarray  # uint8 (N,): EXIF orientation 1..8 (1 = as stored; 5..8 swap height and width)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    modes: dict[str, int] = field(default_factory=dict)  # Pillow mode -> number of indexed files
    formats: dict[str, int] = field(default_factory=dict)  # Pillow format -> number of indexed files
    seconds: float = 0.0  # time to build or load this index
    cached: bool = False  # loaded from the cache rather than built
    digest: str = ""  # 16 hex of the classes, paths, labels and sizes: equal digests, equal rows

    def __post_init__(self):
        if not self.digest:
            self.digest = _digest(self)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def paths(self) -> _Paths:
        return _Paths(self.root, self.path_blob, self.path_offsets)

    def path(self, i: int) -> str:
        return self.paths[i]

    def class_counts(self) -> np.ndarray:
        return np.bincount(np.asarray(self.labels), minlength=len(self.classes))


def cache_root() -> Path:
    return Path(os.environ.get("EFFV2_CACHE_DIR") or Path.home() / ".cache" / "effv2").expanduser()


def cache_dir(root: str | os.PathLike) -> Path:
    """Where the index of `root` is cached: keyed by its absolute, resolved path."""
    key = hashlib.sha256(os.fsencode(str(Path(root).resolve()))).hexdigest()[:16]
    return cache_root() / "index" / key


def build_index(root: str | os.PathLike, *, refresh: bool = False, workers: int | None = None) -> FolderIndex:
    """The index of ROOT/<class>/<files>, from the cache when it is current, else built (and cached)."""
    start = time.perf_counter()
    top = _check_root(root)
    listed_ns = time.time_ns()
    classes = _class_names(top)
    stamps = _mtimes(top, classes)
    where = cache_dir(top)
    if not refresh:
        cached = _load_cached(where, str(top), stamps)
        if cached is not None and (max(stamps.values()) < cached[1] - RACY_NS
                                   or _same_listing(top, classes, cached[0], where)):
            cached[0].seconds = time.perf_counter() - start
            return cached[0]
    index = _scan(top, classes, workers)
    _save(where, index, stamps, listed_ns)
    index.seconds = time.perf_counter() - start
    return index


def _check_root(root) -> Path:
    text = str(root)
    if text == "":
        raise DataError("'': an empty path names no folder")
    p = Path(text)
    if not p.exists():
        raise DataError(f"{text}: no such folder")
    if not p.is_dir():
        raise DataError(f"{text}: not a folder; an image folder is ROOT/<class name>/<image files>")
    return p.resolve()


def _class_names(top: Path) -> list[str]:
    try:
        with os.scandir(top) as entries:
            classes = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError as exc:
        raise DataError(f"{exc.filename or top}: cannot read ({exc.strerror or exc})") from None
    if not classes:
        raise DataError(f"{top}: no class sub-folders; expected ROOT/<class name>/<image files>")
    return classes


def _mtimes(top: Path, classes: list[str]) -> dict[str, int]:
    """mtime_ns of ROOT (key "") and of each class folder: what the cache is checked against."""
    try:
        stamps = {"": os.stat(top).st_mtime_ns}
        for name in classes:
            stamps[name] = os.stat(top / name).st_mtime_ns
    except OSError as exc:
        raise DataError(f"{exc.filename or top}: cannot read ({exc.strerror or exc})") from None
    return stamps


def _list_files(top: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """Relative paths "<class>/<name>" of every non-hidden entry below each class folder, and their labels."""
    rel, labels = [], []
    for label, name in enumerate(classes):
        try:
            with os.scandir(top / name) as entries:
                names = sorted(e.name for e in entries if not e.name.startswith("."))
        except OSError as exc:
            raise DataError(f"{exc.filename or top / name}: cannot read ({exc.strerror or exc})") from None
        rel.extend(f"{name}/{n}" for n in names)
        labels.extend([label] * len(names))
    return rel, labels


def _header(path: str) -> tuple[int, int, str, str, int] | str:
    """(height, width, mode, format, orientation) from the file's header, or the reason it is unreadable."""
    from ..preprocess import ImageError, open_raster

    try:
        with open_raster(path) as im:
            width, height = im.size
            orientation = 1
            if "exif" in im.info or im.format == "TIFF":  # read from the header; PNG's eXIf may sit past the data
                orientation = int(im.getexif().get(0x0112, 1) or 1)
            if width < 1 or height < 1:
                return f"empty image ({width} x {height})"
            return height, width, im.mode, str(im.format), orientation if 1 <= orientation <= 8 else 1
    except ImageError as exc:
        text = str(exc)
        return text[len(path) + 2:] if text.startswith(f"{path}: ") else text
    except PILLOW_ERRORS as exc:
        first = (str(exc).strip().splitlines() or [""])[0].replace(f" '{path}'", "")
        first = re.sub(r" <_io\.\w+ name=[^>]*>", "", first)  # Pillow names the file object it was given
        return f"not an image Pillow can read ({type(exc).__name__}{': ' + first if first else ''})"


def _read_chunk(paths: list[str]) -> list:
    return [_header(p) for p in paths]


def _default_workers() -> int:
    return min(32, 4 * (os.cpu_count() or 1))


def _scan(top: Path, classes: list[str], workers: int | None) -> FolderIndex:
    rel, labels = _list_files(top, classes)
    full = [os.path.join(top, r) for r in rel]
    chunks = [full[i:i + _CHUNK] for i in range(0, len(full), _CHUNK)]
    with ThreadPoolExecutor(max_workers=max(1, workers or _default_workers())) as pool:
        results = [r for chunk in pool.map(_read_chunk, chunks) for r in chunk]
    keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
    excluded = [(full[i], r) for i, r in enumerate(results) if isinstance(r, str)]
    kept_labels = np.asarray([labels[i] for i in keep], dtype=np.int64)
    _check_classes(top, classes, kept_labels, labels, excluded)
    encoded = [os.fsencode(rel[i]) for i in keep]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    heads = [results[i] for i in keep]
    modes: dict[str, int] = {}
    formats: dict[str, int] = {}
    for h in heads:
        modes[h[2]] = modes.get(h[2], 0) + 1
        formats[h[3]] = formats.get(h[3], 0) + 1
    return FolderIndex(
        str(top), classes, blob, offsets, kept_labels,
        np.asarray([h[0] for h in heads], dtype=np.int32), np.asarray([h[1] for h in heads], dtype=np.int32),
        np.asarray([h[4] for h in heads], dtype=np.uint8), excluded, dict(sorted(modes.items())),
        dict(sorted(formats.items())))


def _digest(index: FolderIndex) -> str:
    """What a loader worker can compare with its parent's: the same digest means the same rows (a worker that
    re-opens an index after the folder changed would otherwise read other files under the same row numbers)."""
    h = hashlib.sha256(json.dumps(index.classes).encode())
    for name in _ARRAYS:
        a = np.ascontiguousarray(getattr(index, name))
        h.update(f"{name}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _check_classes(top: Path, classes: list[str], kept: np.ndarray, listed: list[int],
                   excluded: list[tuple[str, str]]) -> None:
    """Every class needs at least one readable image: a class without any cannot be learnt or evaluated."""
    have = np.bincount(kept, minlength=len(classes))
    files = np.bincount(np.asarray(listed, dtype=np.int64), minlength=len(classes))
    for label in np.flatnonzero(have == 0):
        name = classes[int(label)]
        if files[label] == 0:
            raise DataError(f"{top / name}: class folder holds no files")
        first = next(f"{p}: {r}" for p, r in excluded if os.path.dirname(p) == str(top / name))
        raise DataError(f"{top / name}: none of its {int(files[label])} file(s) is a readable image "
                          f"(first: {first})")


def _load_cached(where: Path, root: str, stamps: dict[str, int]) -> tuple[FolderIndex, int] | None:
    """(the cached index, when its folders were listed) when it is complete and its folder mtimes match
    `stamps`; None otherwise."""
    try:
        meta = json.loads((where / "index.json").read_text())
        if (meta.get("format") != FORMAT_VERSION or meta.get("root") != root or meta.get("mtimes") != stamps
                or meta.get("classes") != list(stamps)[1:]):
            return None
        listed_ns = int(meta.get("listed_ns", 0))
        arrays = {k: np.load(where / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in _ARRAYS}
    except (OSError, ValueError, TypeError, AttributeError):  # absent, half-deleted or foreign: rebuild
        return None
    n = int(meta.get("count", -1))
    if (arrays["path_offsets"].shape != (n + 1,) or any(arrays[k].shape != (n,) for k in _ARRAYS[2:])
            or (n >= 0 and int(arrays["path_offsets"][-1]) != arrays["path_blob"].shape[0])):
        return None
    excluded = [(str(p), str(r)) for p, r in meta.get("excluded", [])]
    if not isinstance(meta.get("digest"), str) or len(meta["digest"]) != 16:
        return None
    return FolderIndex(root, list(meta["classes"]), *(arrays[k] for k in _ARRAYS), excluded=excluded,
                       modes=dict(meta.get("modes", {})), formats=dict(meta.get("formats", {})),
                       cached=True, digest=meta["digest"]), listed_ns


def _same_listing(top: Path, classes: list[str], index: FolderIndex, where: Path) -> bool:
    """For a cache whose folders changed close to its listing: list them again (names only, no header is
    read) and compare. Each loader worker opens the index again, and re-reading every header of a freshly
    copied data set in each of them would cost minutes. When the folders have been still since long enough
    before this listing, the cache is marked as listed now, so later loads skip the check."""
    now = time.time_ns()
    stamps = _mtimes(top, classes)
    rel, _ = _list_files(top, classes)
    prefix = len(str(top)) + 1
    known = sorted([index.paths.relative(i) for i in range(len(index))] + [p[prefix:] for p, _ in index.excluded])
    if known != sorted(rel):
        return False
    if max(stamps.values()) < now - RACY_NS:
        try:
            meta = json.loads((where / "index.json").read_text())
            if meta.get("mtimes") == stamps:
                meta["listed_ns"] = now
                tmp = where / f".index.json.{os.getpid()}.tmp"
                tmp.write_text(json.dumps(meta))
                os.replace(tmp, where / "index.json")
        except (OSError, ValueError):
            pass  # the check runs again next time
    return True


def _save(where: Path, index: FolderIndex, stamps: dict[str, int], listed_ns: int) -> None:
    """Write the index to a temporary folder next to `where`, then rename it into place.

    A cache that cannot be written (read-only home, full disk) costs the next run a rescan, nothing
    more: one warning, and the index in memory is used as is."""
    tmp = None
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=where.parent, prefix=f".{where.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())
        for k in _ARRAYS:
            np.save(tmp / f"{k}.npy", np.asarray(getattr(index, k)), allow_pickle=False)
        meta = {"format": FORMAT_VERSION, "root": index.root, "classes": index.classes, "mtimes": stamps,
                "listed_ns": listed_ns, "count": len(index), "excluded": index.excluded, "modes": index.modes,
                "formats": index.formats, "digest": index.digest}
        (tmp / "index.json").write_text(json.dumps(meta))
        _swap_in(tmp, where)
        tmp = None
    except OSError as exc:
        warnings.warn(f"{where}: cannot cache the folder index ({exc.strerror or exc}); the next run reads "
                      f"the headers again", stacklevel=3)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, where: Path) -> None:
    """Rename `tmp` to `where`, moving an older cache aside first (a folder cannot replace a non-empty one).

    Readers holding the old files memory-mapped keep them: renamed and unlinked files live on until closed.
    If another process put its own index in place first, both describe the same folder: keep theirs."""
    old = None
    if where.exists():
        old = Path(tempfile.mkdtemp(dir=where.parent, prefix=f".{where.name}.", suffix=".old"))
        os.rmdir(old)
        try:
            os.replace(where, old)
        except FileNotFoundError:
            old = None
    try:
        os.replace(tmp, where)
    except OSError:
        if not where.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["FORMAT_VERSION", "FolderIndex", "build_index", "cache_dir", "cache_root"]
