"""Training checkpoints: one `.npz` holding everything a resumed run needs, written atomically.

Arrays: `model/<canonical name>` (parameters and BN buffers), `opt/<slot>/<name>` (optimiser
slots and step count), `ema/<name>` (the EMA shadow, when the recipe has one). `meta` holds
UTF-8 JSON: the spec, schedule and training documents (a resume must use the same three),
seed, dtype, the step reached, the model generator's state (dropout and drop-path masks) and
the per-stage history so far. Data order and augmentation need no saved state: they are drawn
from generators keyed by (seed, epoch) and (seed, step), see train.py.

Written to a temporary file in the same folder and renamed over the old one, so a crash or a
kill leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from effv2_spec.weights import atomic_write_bytes

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
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{p}: not a readable effv2 checkpoint ({exc})") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"{p}: not an effv2 checkpoint (format {found!r}, expected {FORMAT!r})")
    parts: dict[str, dict[str, np.ndarray]] = {"model": {}, "opt": {}, "ema": {}}
    for key, v in arrays.items():
        head, _, name = key.partition("/")
        if head not in parts:
            raise CheckpointError(f"{p}: unexpected array {key!r}")
        parts[head][name] = v
    return Checkpoint(meta, parts["model"], parts["opt"], parts["ema"])
