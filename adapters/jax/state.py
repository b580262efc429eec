"""The Flax NNX model's state as flat dicts of canonical names, and back (the JAX trainer's layout)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np


def _leaf_name(path) -> str | None:
    """The canonical name of a Param / BatchStat leaf of an nnx.State (None for rng state)."""
    from .canonical import _LEAF_TO_CANONICAL, canonical_name

    keys = [getattr(p, "key", getattr(p, "name", p)) for p in path]
    if keys and keys[-1] == "value":
        path, keys = path[:-1], keys[:-1]
    if not keys or str(keys[-1]) not in _LEAF_TO_CANONICAL or str(keys[0]) == "rngs":
        return None
    return canonical_name(path)


@dataclass(frozen=True)
class _Layout:
    """Static description of the model's state (hashable: part of the compiled step's key)."""

    graphdef: Any
    param_def: Any
    param_names: tuple
    rest_def: Any
    rest_names: tuple  # canonical name, or None for a leaf kept as is (rng state)
    key_impls: tuple = ()  # per rng leaf: the PRNG implementation of a key (stored as its raw data), or None

    def merge(self, params: Mapping, stats: Mapping, other: tuple):
        import jax
        from flax import nnx

        it = iter(jax.random.wrap_key_data(v, impl=impl) if impl is not None else v
                  for v, impl in zip(other, self.key_impls))
        p = jax.tree.unflatten(self.param_def, [params[n] for n in self.param_names])
        r = jax.tree.unflatten(self.rest_def, [stats[n] if n is not None else next(it) for n in self.rest_names])
        return nnx.merge(self.graphdef, p, r)


def _split(model):
    import jax
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pl, pdef = jax.tree_util.tree_flatten_with_path(params)
    rl, rdef = jax.tree_util.tree_flatten_with_path(rest)
    rest_names = tuple(_leaf_name(p) for p, _ in rl)
    other = [v for n, (_, v) in zip(rest_names, rl) if n is None]
    impls = tuple(jax.random.key_impl(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else None
                  for v in other)
    other = tuple(np.asarray(jax.random.key_data(v)) if impl is not None else np.asarray(v)
                  for v, impl in zip(other, impls))
    layout = _Layout(graphdef, pdef, tuple(_leaf_name(p) for p, _ in pl), rdef, rest_names, impls)
    values = {n: v for n, (_, v) in zip(layout.param_names, pl)}
    stats = {n: v for n, (_, v) in zip(rest_names, rl) if n is not None}
    return layout, values, stats, other


def _stats_of(model) -> dict:
    import jax
    from flax import nnx

    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.BatchStat))
    return {_leaf_name(p): v for p, v in leaves}
