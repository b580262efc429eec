"""Canonical weights files: safetensors with canonical names, the spec in the metadata.

A weights file describes itself: its metadata carries the architecture spec JSON, so
loading checks names, shapes and the architecture together. Writes are atomic.
"""

from __future__ import annotations

import os
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_weights(path: str | os.PathLike, spec: ArchitectureSpec, tensors: dict[str, np.ndarray],
                 extra_metadata: dict[str, str] | None = None) -> None:
    """Save canonical tensors (numpy) with the spec JSON in the metadata, atomically."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    metadata = {"format": FORMAT, "effv2_spec": spec.model_dump_json()}
    metadata.update(extra_metadata or {})
    atomic_write_bytes(path, save(arrays, metadata=metadata))


def load_weights(path: str | os.PathLike) -> tuple[ArchitectureSpec | None, dict[str, np.ndarray]]:
    """Load a canonical weights file: (spec from its metadata or None, tensors)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    spec = None
    if "effv2_spec" in metadata:
        spec = ArchitectureSpec.model_validate_json(metadata["effv2_spec"])
    return spec, tensors
