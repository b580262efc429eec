"""Training checkpoints: one `.npz` holding everything a resumed run needs, written atomically.

Arrays: `model/<canonical name>` (parameters and BN buffers), `opt/<slot>/<name>` (optimiser
slots and step count), `ema/<name>` (the EMA shadow, when the recipe has one). `meta` holds
UTF-8 JSON: the spec, schedule and training documents (a resume must use the same three),
seed, dtype, the step reached, the model generator's state (dropout and drop-path masks) and
the per-stage history so far. Data order and augmentation need no saved state: they are drawn
from generators keyed by (seed, epoch) and (seed, step), see train.py.

Written to a temporary file in the same folder and renamed over the old one, so a crash or a
kill leaves either the previous checkpoint or the new one, never half of one.

Read back as untrusted input: the archive through `npzfile.read_npz` (sizes checked before
allocating), the metadata field by field (`meta_problem`), the weights for finiteness.
`prepare_out_dir` keeps a new run from silently replacing an earlier one.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from effv2_spec.weights import atomic_write_bytes

from .npzfile import NpzError, read_npz

FORMAT = "effv2-checkpoint/1"
FILENAME = "checkpoint.npz"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, or written for another spec, schedule or recipe)."""


@dataclass
class Checkpoint:
    meta: dict
    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    ema: dict[str, np.ndarray] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    arrays = {f"model/{k}": v for k, v in ckpt.model.items()}
    arrays.update({f"opt/{k}": v for k, v in ckpt.optimizer.items()})
    arrays.update({f"ema/{k}": v for k, v in ckpt.ema.items()})
    meta = dict(ckpt.meta, format=FORMAT)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no checkpoint to resume from")
    try:
        arrays = read_npz(p)
    except NpzError as exc:
        raise CheckpointError(f"{p}: not a readable effv2 checkpoint: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{p}: not an effv2 checkpoint (no 'meta' array)")
    try:
        meta = json.loads(np.ascontiguousarray(arrays.pop("meta")).tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON
        raise CheckpointError(f"{p}: not an effv2 checkpoint (its meta is not JSON: {exc})") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"{p}: not an effv2 checkpoint (format {found!r}, expected {FORMAT!r})")
    problem = meta_problem(meta)
    if problem:
        raise CheckpointError(f"{p}: damaged checkpoint metadata: {problem}")
    parts: dict[str, dict[str, np.ndarray]] = {"model": {}, "opt": {}, "ema": {}}
    for key, v in arrays.items():
        head, _, name = key.partition("/")
        if head not in parts:
            raise CheckpointError(f"{p}: unexpected array {key!r}")
        parts[head][name] = v
    # training never saves non-finite weights, so such a file was damaged or edited by hand
    bad = next((f"{head}/{k}" for head in ("model", "ema") for k, v in parts[head].items()
                if v.dtype.kind == "f" and not np.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{p}: damaged checkpoint: {bad} holds NaN or infinite values")
    return Checkpoint(meta, parts["model"], parts["opt"], parts["ema"])


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: meta key -> (rule, test); what a resume reads from the metadata, each checked before it is used
_META_RULES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "spec": ("a JSON document string", lambda v: isinstance(v, str)),
    "schedule": ("a JSON document string", lambda v: isinstance(v, str)),
    "training": ("a JSON document string", lambda v: isinstance(v, str)),
    "seed": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "dtype": ("'float32' or 'float64'", lambda v: v in ("float32", "float64")),
    "step": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "total_steps": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "history": ("a list of per-stage records", lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v)),
}


def meta_problem(meta: dict) -> str | None:
    """What is wrong with a checkpoint's metadata (a missing or mistyped field), or None."""
    for key, (rule, ok) in _META_RULES.items():
        if key not in meta:
            return f"{key}: missing"
        if not ok(meta[key]):
            return f"{key}: must be {rule} (got {_short(meta[key])})"
    if meta["step"] > meta["total_steps"]:
        return f"step: {meta['step']} is beyond total_steps {meta['total_steps']}"
    if "partial" in meta and not isinstance(meta["partial"], dict):
        return f"partial: must be an object (got {_short(meta['partial'])})"
    if "model_rng" in meta and not _valid_rng_state(meta["model_rng"]):
        return "model_rng: not a NumPy bit-generator state"
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _valid_rng_state(state) -> bool:
    names = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
    if not isinstance(state, dict) or state.get("bit_generator") not in names:
        return False
    try:
        getattr(np.random, state["bit_generator"])().state = state
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    return True


# ---- the output folder of a run -----------------------------------------------------------------------
#: files a finished or interrupted run leaves; a new run must not silently replace them
RUN_FILES = (FILENAME, "weights.safetensors")
DEFAULT_ROOT = Path("runs")


def prepare_out_dir(out: str | os.PathLike | None, name: str, *, resume: bool, overwrite: bool,
                    root: Path = DEFAULT_ROOT, lock: bool = False) -> Path:
    """The run's output folder, made safe to write: `out`, or `root/<name>` when `out` is None.

    - The default folder must resolve inside `root` (a name such as '../x' is refused; the schema
      refuses it too, this guards callers that build specs in Python).
    - `lock`: the folder is created and locked for this process's life first (run_lock.py): another
      run writing there, or a folder that cannot be written, is refused now rather than minutes in.
    - A folder that holds a checkpoint or weights is refused unless the run resumes it or
      `overwrite` is set. Nothing is removed here: the new run's first checkpoint replaces the old
      one (and removes the old weights, `ProgressiveLoop.save`), so a refused or killed new run
      loses nothing.
    - Temporary files of a write that was killed (`.checkpoint.npz.*.tmp`) are removed.
    """
    folder = Path(out) if out is not None else _default_folder(name, root)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: is a file; --out needs a folder")
    if resume and overwrite:
        raise CheckpointError("--resume and --overwrite exclude each other")
    if lock:
        from .run_lock import RunLockError, hold

        try:
            hold(folder)
        except RunLockError as exc:
            raise CheckpointError(str(exc)) from None
    if folder.is_dir():
        if lock:  # without the lock, another process may be writing one of them right now
            _remove_stale_temporaries(folder)
        held = [f for f in RUN_FILES if (folder / f).exists()]
        if held and not resume and not overwrite:
            raise CheckpointError(f"{folder}: already holds {' and '.join(held)} from an earlier run; "
                                  "use --resume or --overwrite")
    return folder


def _default_folder(name: str, root: Path) -> Path:
    folder = root / name
    base = root.resolve()
    if name in ("", ".", "..") or base not in folder.resolve().parents:
        raise CheckpointError(f"{name!r}: not usable as a folder name under {root}/; pass --out")
    return folder


def _remove_stale_temporaries(folder: Path) -> None:
    # atomic_write_bytes names its temporary file .<target>.<random>.tmp next to the target
    for target in RUN_FILES:
        for tmp in folder.glob(f".{target}.*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass  # another process's, or not ours to remove: harmless to leave
