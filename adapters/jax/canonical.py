"""Canonical tensors and initialisation of the Flax NNX network of modules.py (needs nothing but jax and flax).

The second half of every file `effv2 generate --framework jax` writes (network_table.module_body joins
modules.py and this file, dropping the import between them): the Flax state path of every tensor
maps to its canonical name and layout here (the table in modules.py's docstring), canonical tensors
are loaded and exported, and a model is built from a CONFIG table and initialised by its rows'
init rules.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from .modules import EfficientNet


# ---- canonical tensors ----------------------------------------------------------------------
_LEAF_TO_CANONICAL = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var",
                      "bias": "bias"}
_LEAF_FROM_CANONICAL = {"running_mean": "mean", "running_var": "var", "bias": "bias"}


def canonical_name(path: Tuple[Any, ...]) -> str:
    """Flax state path -> canonical name: ('blocks', 3, 'dw', 'conv', 'kernel') -> 'blocks.3.dw.conv.weight'."""
    *parent, leaf = [str(getattr(p, "key", p)) for p in path]
    return ".".join(parent + [_LEAF_TO_CANONICAL[leaf]])


def flax_leaf(name: str) -> str:
    """The Flax attribute holding canonical tensor `name` ('weight' is 'scale' in BN, else 'kernel')."""
    parent, leaf = name.rsplit(".", 1)
    if leaf == "weight":
        return "scale" if parent.endswith(".bn") or parent == "bn" else "kernel"
    return _LEAF_FROM_CANONICAL[leaf]


def to_canonical_layout(value: np.ndarray) -> np.ndarray:
    """HWIO -> OIHW (4-D), (in, out) -> (out, in) (2-D), vectors unchanged."""
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
        return value.T
    return value


def from_canonical_layout(value: np.ndarray) -> np.ndarray:
    """OIHW -> HWIO (4-D), (out, in) -> (in, out) (2-D), vectors unchanged."""
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return value.T
    return value


def model_variables(model: EfficientNet) -> Dict[str, nnx.Variable]:
    """Canonical name -> the Param / BatchStat holding it (rng state excluded)."""
    out = {}
    for path, var in nnx.iter_graph(model):
        if isinstance(var, (nnx.Param, nnx.BatchStat)):
            out[canonical_name(path)] = var
    return out


def state_to_numpy(state: nnx.State) -> Dict[str, np.ndarray]:
    """An `nnx.State` (e.g. the gradients from `forward_backward`) as canonical numpy tensors."""
    out = {}
    for path, v in nnx.to_flat_state(state):
        value = v[...] if isinstance(v, nnx.Variable) else v
        out[canonical_name(path)] = np.ascontiguousarray(to_canonical_layout(np.asarray(value)))
    return out


def to_canonical(model: EfficientNet) -> Dict[str, np.ndarray]:
    """Every parameter and BN statistic as a numpy array, canonical name and layout."""
    return {name: np.ascontiguousarray(to_canonical_layout(np.asarray(var[...])))
            for name, var in model_variables(model).items()}


def load_canonical(model: EfficientNet, tensors: Mapping[str, Any], require_buffers: bool = True) -> EfficientNet:
    """Copy canonical tensors into `model` (cast to its dtype); a ValueError names every mismatch.

    With `require_buffers=False`, BN running statistics absent from `tensors` keep their values."""
    variables = model_variables(model)
    shapes = {n: tuple(to_canonical_layout(np.empty(v[...].shape, np.bool_)).shape) for n, v in variables.items()}
    missing = sorted(n for n in set(variables) - set(tensors)
                     if require_buffers or not isinstance(variables[n], nnx.BatchStat))
    extra = sorted(set(tensors) - set(variables))
    wrong = sorted(f"{n}: expected shape {shapes[n]}, got {tuple(np.shape(tensors[n]))}"
                   for n in set(variables) & set(tensors) if tuple(np.shape(tensors[n])) != shapes[n])
    problems = []
    for label, items in (("missing", missing), ("unexpected", extra)):
        if items:
            problems.append(f"{label} {len(items)} tensor(s): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}")
    if wrong:
        problems.append("wrong shape: " + "; ".join(wrong[:8]) + (" ..." if len(wrong) > 8 else ""))
    if problems:
        raise ValueError("weights do not match the model: " + " | ".join(problems))
    for name, value in tensors.items():
        var = variables[name]
        var[...] = jnp.asarray(from_canonical_layout(np.asarray(value)).astype(var[...].dtype))
    return model


# ---- initialisation and construction --------------------------------------------------------
def init_array(rng: np.random.Generator, shape: Tuple[int, ...], kind: str, scale: float) -> np.ndarray:
    """A float64 array by an init rule: normal (std), truncated_normal (std, cut at 2 std: outliers redrawn),
    uniform (bound), zeros, ones; drawn with numpy (no compilation)."""
    if kind == "zeros":
        return np.zeros(shape)
    if kind == "ones":
        return np.ones(shape)
    if kind == "normal":
        return rng.normal(0.0, scale, shape)
    if kind == "truncated_normal":
        z = rng.standard_normal(shape)
        bad = np.abs(z) > 2.0
        while bad.any():
            z[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(z) > 2.0
        return z * scale
    if kind == "uniform":
        return rng.uniform(-scale, scale, shape)
    raise ValueError(f"unknown init kind {kind!r}")


def _init_rows(cfg: dict):
    """(canonical name, [kind, scale]) for every tensor, constants included, in the table's order."""
    rows = [cfg["stem"], *(layer for block in cfg["blocks"] for layer in block["layers"]), cfg["head"],
            cfg["classifier"]]
    for row in rows:
        for name, rule in row["init"].items():
            yield f"{row['name']}.{name}", rule


def initialize(model: EfficientNet, cfg: dict, seed: int = 0) -> EfficientNet:
    """Every tensor by the init rules of the config rows (numpy generator `seed`, drawn in canonical layout,
    in the table's order: constants draw nothing)."""
    variables = model_variables(model)
    rng = np.random.default_rng(seed)
    for name, (kind, scale) in _init_rows(cfg):
        var = variables[name]
        canonical_shape = to_canonical_layout(np.empty(var[...].shape, np.bool_)).shape
        value = from_canonical_layout(init_array(rng, canonical_shape, kind, float(scale)))
        var[...] = jnp.asarray(value.astype(var[...].dtype))
    return model


def build_from_config(cfg: dict, dtype: Any = np.float32, init: bool = True, seed: int = 0) -> EfficientNet:
    """Build the network described by `cfg` in `dtype`, initialised by its init rules unless `init` is False."""
    model = EfficientNet(cfg, dtype, seed)
    return initialize(model, cfg, seed) if init else model
