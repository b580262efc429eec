"""Canonical tensors (numpy dict / safetensors file) <-> Flax NNX state, both ways, with clear errors.

The layout conversion (OIHW <-> HWIO, dense (out, in) <-> (in, out)) and the name mapping live in
`modules` (so generated files carry them too); here they are checked against the spec's parameter
table with `effv2_spec.weights.check_tensors`, whose `WeightsError` names missing, unexpected and
mis-shaped tensors.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from effv2_spec.weights import WeightsError, check_tensors, load_weights, save_weights

from effv2_spec.resolve import as_resolved
from .canonical import load_canonical, to_canonical
from .modules import EfficientNet


def state_to_canonical(model: EfficientNet, resolved: Any = None) -> dict[str, np.ndarray]:
    """Canonical numpy tensors (params and BN statistics) from a model, checked against `resolved` when given."""
    tensors = to_canonical(model)
    if resolved is not None:
        check_tensors(as_resolved(resolved), tensors)
    return tensors


def load_canonical_tensors(model: EfficientNet, tensors: Mapping[str, Any], resolved: Any = None,
                           *, require_buffers: bool = True) -> EfficientNet:
    """Copy canonical tensors into `model` (cast to its dtype); `WeightsError` on any mismatch."""
    tensors = {k: np.asarray(v) for k, v in tensors.items()}
    if resolved is not None:
        check_tensors(as_resolved(resolved), tensors, require_buffers=require_buffers)
    try:
        return load_canonical(model, tensors, require_buffers=require_buffers)
    except ValueError as exc:
        raise WeightsError(str(exc)) from None


def load_safetensors(model: EfficientNet, path: str | os.PathLike, resolved: Any = None) -> EfficientNet:
    """Load a canonical weights file into `model`; checked against the file's embedded spec when `resolved` is None."""
    spec, tensors = load_weights(path)
    return load_canonical_tensors(model, tensors, resolved if resolved is not None else spec)


def save_safetensors(model: EfficientNet, path: str | os.PathLike, spec: Any) -> None:
    """Write `model`'s canonical tensors with the spec in the metadata, atomically."""
    resolved = as_resolved(spec)
    save_weights(path, resolved.spec, state_to_canonical(model, resolved))
