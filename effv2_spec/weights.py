"""Canonical weights files: safetensors with canonical names, the spec in the metadata.

A weights file describes itself: its metadata carries the architecture spec JSON, so
loading checks names, shapes and the architecture together. Writes are atomic.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np

from .architecture import ArchitectureSpec
from .resolve import ResolvedModel

FORMAT = "effv2-canonical-1"


class WeightsError(ValueError):
    """A weights file or tensor dict that does not match the spec."""


def mismatch(missing: list[str], extra: list[str], wrong: list[str], limit: int = 8) -> str:
    """One line naming missing, unexpected and mis-shaped tensors (the first `limit` of each); '' if none."""
    def names(items: list[str]) -> str:
        return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")

    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {names(missing)}")
    if extra:
        problems.append(f"unexpected {len(extra)} tensor(s): {names(extra)}")
    if wrong:
        problems.append("wrong shape: " + "; ".join(wrong[:limit]) + (" ..." if len(wrong) > limit else ""))
    return " | ".join(problems)


def check_tensors(resolved: ResolvedModel, tensors: dict[str, np.ndarray], *, require_buffers: bool = True) -> None:
    """Raise `WeightsError` listing missing, unexpected and mis-shaped tensors."""
    expected = {p.name: p.shape for p in resolved.params if require_buffers or p.trainable}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - {p.name for p in resolved.params})
    wrong = sorted(
        f"{n}: expected shape {expected[n]}, got {tuple(np.shape(tensors[n]))}"
        for n in set(expected) & set(tensors)
        if tuple(np.shape(tensors[n])) != expected[n]
    )
    problems = mismatch(missing, extra, wrong)
    if problems:
        raise WeightsError(f"weights do not match spec {resolved.spec.name!r}: {problems}")


def _umask() -> int:
    # os.umask can only be read by setting it; restore it at once
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_target(path: Path) -> None:
    """Refuse an output path that is a folder or lies under a file, with the reason as strerror."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file name", str(path))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a folder", str(path))
            return


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and rename, so a crash never leaves half a file.

    The file gets the mode an ordinary write would give: an existing file keeps its mode, a new
    one gets 0666 less the umask (mkstemp alone would leave every output 0600). Any failure is an
    OSError naming `path` (not the temporary file), with the reason in `strerror`.
    """
    if str(path).endswith(("/", os.sep)):
        raise IsADirectoryError(errno.EISDIR, "names a folder; give a file name", str(path))
    path = Path(path)
    _check_target(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise


def reproducible_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with a header whose key order depends only on its content.

    safetensors keeps the metadata in a hash map, so two processes saving the same tensors
    write the metadata keys in different orders; sorting them makes equal runs byte-identical.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    metadata = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(metadata.items()))} if metadata is not None else {}
    ordered.update(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"][0], kv[0])))
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def save_weights(path: str | os.PathLike, spec: ArchitectureSpec, tensors: dict[str, np.ndarray],
                 extra_metadata: dict[str, str] | None = None) -> None:
    """Save canonical tensors (numpy) with the spec JSON in the metadata, atomically and reproducibly."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    metadata = {"format": FORMAT, "effv2_spec": spec.model_dump_json()}
    metadata.update(extra_metadata or {})
    atomic_write_bytes(path, reproducible_safetensors(save(arrays, metadata=metadata)))


def value_problem(tensors: dict[str, np.ndarray]) -> str | None:
    """What makes these tensors unusable as weights whatever the spec, naming the first tensor; None if nothing.

    Names and shapes are the spec's business (check_tensors); here: every tensor floating point (an
    integer or bool file would be cast silently: all-ones weights), finite, and BN variances >= 0
    (their square root is taken)."""
    for name, v in tensors.items():
        if v.dtype.kind != "f":
            return f"{name} holds {v.dtype} values; weights are floating point (float16, float32 or float64)"
    for name, v in tensors.items():
        if not np.isfinite(v).all():
            return f"{name} holds NaN or infinite values"
        if name.endswith("running_var") and v.size and v.min() < 0:
            return f"{name} holds a negative variance ({float(v.min()):.3g}); a BN running variance is >= 0"
    return None


def load_weights(path: str | os.PathLike) -> tuple[ArchitectureSpec | None, dict[str, np.ndarray]]:
    """Load a canonical weights file: (spec from its metadata or None, tensors)."""
    from safetensors import safe_open

    if not str(path):
        raise WeightsError("'': an empty path names no weights file")
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory, not a weights file")
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    problem = value_problem(tensors)
    if problem:
        raise WeightsError(f"{path}: {problem}")
    spec = None
    if "effv2_spec" in metadata:
        spec = _embedded_spec(path, metadata["effv2_spec"])
    return spec, tensors


def _embedded_spec(path: Path, text: str) -> ArchitectureSpec:
    from .documents import parse_text
    from .errors import SpecError

    try:
        return parse_text(text, ArchitectureSpec)
    except SpecError as exc:
        first = exc.lines()[0]
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        raise WeightsError(f"{path}: the spec in its metadata (effv2_spec) is not valid: {first}{more}") from None
