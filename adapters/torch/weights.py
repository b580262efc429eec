"""Canonical tensors (numpy dict / safetensors file) <-> PyTorch state_dict.

The torch model's state_dict keys are the canonical names, so conversion is a checked
rename-free copy: `check_tensors` names missing, unexpected and mis-shaped tensors.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch

from effv2_spec.resolve import ResolvedModel
from effv2_spec.weights import WeightsError, check_tensors, load_weights, mismatch, save_weights

from effv2_spec.resolve import as_resolved


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def state_dict_to_canonical(model_or_state: torch.nn.Module | Mapping[str, torch.Tensor],
                            resolved: ResolvedModel | None = None) -> dict[str, np.ndarray]:
    """Canonical numpy tensors from a model (or its state_dict), checked against `resolved` when given."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    tensors = {k: to_numpy(v) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if resolved is not None:
        check_tensors(resolved, tensors)
    return tensors


def load_canonical_tensors(model: torch.nn.Module, tensors: Mapping[str, Any], resolved: Any = None,
                           *, require_buffers: bool = True) -> torch.nn.Module:
    """Copy canonical tensors into `model` (cast to each tensor's dtype); clear errors on any mismatch.

    With `require_buffers=False`, BN running statistics absent from `tensors` keep their values.
    """
    if resolved is not None:
        check_tensors(as_resolved(resolved), dict(tensors), require_buffers=require_buffers)
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    if not require_buffers:
        buffers = {n for n, _ in model.named_buffers()}
        missing = [m for m in missing if m not in buffers]
    extra = sorted(set(tensors) - set(state))
    wrong = sorted(f"{k}: expected shape {tuple(state[k].shape)}, got {tuple(np.shape(tensors[k]))}"
                   for k in set(state) & set(tensors) if tuple(state[k].shape) != tuple(np.shape(tensors[k])))
    problems = mismatch(missing, extra, wrong)
    if problems:
        raise WeightsError(f"weights do not match the model: {problems}")
    with torch.no_grad():
        for k, v in tensors.items():
            dst = state[k]
            src = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
            dst.copy_(src.to(dtype=dst.dtype, device=dst.device))
    return model


def load_safetensors(model: torch.nn.Module, path: str | os.PathLike, resolved: Any = None) -> torch.nn.Module:
    """Load a canonical weights file into `model`; the file's embedded spec is checked when `resolved` is None."""
    spec, tensors = load_weights(path)
    if resolved is None and spec is not None:
        resolved = spec
    return load_canonical_tensors(model, tensors, resolved)


def save_safetensors(model: torch.nn.Module, path: str | os.PathLike, spec: Any) -> None:
    """Write `model`'s canonical tensors (params and BN buffers) with the spec in the metadata, atomically."""
    resolved = as_resolved(spec)
    save_weights(path, resolved.spec, state_dict_to_canonical(model, resolved))
