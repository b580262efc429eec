"""optax optimisers configured from an effv2 `TrainingConfig` (docs/internals.md, Optimisers).

The step's semantics are the run's recipe (effv2_train.recipe): coupled L2 weight decay is
`optax.add_decayed_weights(rate, mask)` first in the chain (g += rate * w on the tensors of
`Recipe.decays`), then, when the recipe clips, `clip_by_recipe` (every gradient times the recipe's
`clip_factor` of their global squared norm), so the optimiser sees the decayed, clipped gradient.

* SGD: `optax.sgd(lr, momentum, nesterov)`: optax's `trace` is `v = momentum * v + g` with update `v`
  (nesterov: `g + momentum * v`), the PyTorch formulation with dampening 0; then `-lr`.
* RMSProp: `optax.scale_by_rms(decay, eps, initial_scale=initial_accumulator, eps_in_sqrt=...)` gives
  `ms = decay * ms + (1 - decay) g^2` (ms starts at `initial_scale`) and `g * rsqrt(ms + eps)`
  (`eps_in_sqrt=True`, 'inside_sqrt') or `g / (sqrt(ms) + eps)` ('outside_sqrt'); no bias correction.
  `optax.rmsprop` chains `scale_by_rms -> scale_by_learning_rate -> trace(momentum)`, i.e. the lr sits
  inside the momentum buffer (`mom = m * mom + lr * g / d; w -= mom`): exactly `lr_in_momentum=True`,
  which is what it is used for. optax has no switch for `lr_in_momentum=False`
  (`buf = m * buf + g / d; w -= lr * buf`), so that case is the same optax transformations in the
  other order: `scale_by_rms -> trace(momentum) -> scale_by_learning_rate`.
* AdamW: `optax.adamw(lr, b1, b2, eps, eps_root=0, weight_decay, mask)`: `scale_by_adam` (m, v, bias
  correction from its `count`, eps outside the sqrt), then `weight_decay * w` added on the masked (decayed)
  group, then `-lr`: `w -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * w)`, torch.optim.AdamW's step.
  A resumed run sets optax's step counts from the checkpoint's `steps` (`step_count_leaves`).

The learning rate of step k is a schedule `lrs[count]` (optax passes the step count), so a list of
per-step rates runs through optax's own machinery. Steps are jit-compiled.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from effv2_spec.resolve import ResolvedModel
from effv2_spec.training import TrainingConfig
from effv2_train.recipe import SLOTS, Recipe, clip_factor


def decay_mask(names: Sequence[str], config: TrainingConfig, resolved: ResolvedModel) -> dict[str, bool]:
    decays = Recipe.of(config, resolved).decays
    return {n: n in decays for n in names}


#: the optax state fields that hold each optimiser's slots, in the order of the recipe's canonical slots
_OPTAX_FIELDS = {"sgd": ("trace",), "rmsprop": ("nu", "trace"), "adamw": ("mu", "nu")}


def optax_slot_names(kind: str) -> dict[str, str]:
    """optax state field -> canonical slot (effv2_train.recipe.SLOTS) for optimiser `kind`."""
    return dict(zip(_OPTAX_FIELDS[kind], SLOTS[kind], strict=True))


def step_count_leaves(state) -> list[int]:
    """Indices into `jax.tree.leaves(state)` of optax's step counts (`count` fields: AdamW's bias correction,
    schedules), which a resumed run sets to the checkpoint's `steps`."""
    paths = jax.tree_util.tree_flatten_with_path(state)[0]
    return [i for i, (path, _) in enumerate(paths) if path and getattr(path[-1], "name", None) == "count"]


def clip_by_recipe(clip_norm: float) -> optax.GradientTransformation:
    """The recipe's clipping: every update times `clip_factor(global squared norm, clip_norm)`."""

    def update(updates, state, params=None):
        del params
        sq_norm = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(updates))
        factor = clip_factor(sq_norm, clip_norm, xp=jnp)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: TrainingConfig, learning_rate, mask: Mapping[str, bool] | None = None,
                   clip_norm: float | None = None) -> optax.GradientTransformation:
    """The optax transformation for `config`; `learning_rate` a float or an optax schedule.

    With `clip_norm`, `clip_by_recipe` sits between the L2 term and the optimiser: the recipe clips
    the gradient the L2 term was added to (effv2_train.recipe)."""
    opt = config.optimizer
    if opt.type == "sgd":
        core = optax.sgd(learning_rate, momentum=opt.momentum or None, nesterov=bool(opt.nesterov and opt.momentum))
    elif opt.type == "rmsprop":
        eps_in_sqrt = opt.eps_placement == "inside_sqrt"
        momentum = opt.momentum or None
        if opt.lr_in_momentum or momentum is None:
            core = optax.rmsprop(learning_rate, decay=opt.decay, eps=opt.eps, initial_scale=opt.initial_accumulator,
                                 eps_in_sqrt=eps_in_sqrt, centered=False, momentum=momentum, bias_correction=False)
        else:
            core = optax.chain(
                optax.scale_by_rms(decay=opt.decay, eps=opt.eps, initial_scale=opt.initial_accumulator,
                                   eps_in_sqrt=eps_in_sqrt, bias_correction=False),
                optax.trace(decay=momentum, nesterov=False),
                optax.scale_by_learning_rate(learning_rate),
            )
    elif opt.type == "adamw":
        core = optax.adamw(learning_rate, b1=opt.beta1, b2=opt.beta2, eps=opt.eps, eps_root=0.0,
                           weight_decay=opt.weight_decay, mask=mask)
    else:  # pragma: no cover - the schema admits only these
        raise ValueError(f"unknown optimizer {opt.type!r}")
    if clip_norm is not None:
        core = optax.chain(clip_by_recipe(float(clip_norm)), core)
    rate = float(config.weight_decay.rate)
    if rate == 0.0 or (mask is not None and not any(mask.values())):
        return core
    return optax.chain(optax.add_decayed_weights(rate, mask), core)


def optimizer_steps(tensors: Mapping[str, np.ndarray], grads_per_step: Sequence[Mapping[str, np.ndarray]],
                    config: TrainingConfig, lrs: Sequence[float], resolved: ResolvedModel) -> dict[str, np.ndarray]:
    """Apply len(lrs) optax steps of the recipe from fresh optimiser state; returns every trainable tensor
    (those the recipe freezes unchanged).

    Every transformation used is elementwise, so the tensors of each weight-decay group are
    concatenated into one vector ("decayed", "other") before optax sees them: the numbers are
    the same as per tensor, and XLA compiles two kernels instead of one per tensor (on CPU that
    is seconds per step function).
    """
    if len(grads_per_step) != len(lrs):
        raise ValueError(f"got {len(grads_per_step)} gradient sets for {len(lrs)} learning rates")
    recipe = Recipe.of(config, resolved)
    names = recipe.stepped
    dtype = np.asarray(tensors[names[0]]).dtype
    if dtype == np.float64 and not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)
    groups = {"decayed": [n for n in names if n in recipe.decays],
              "other": [n for n in names if n not in recipe.decays]}
    groups = {g: ns for g, ns in groups.items() if ns}

    def pack(arrays: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        return {g: jnp.asarray(np.concatenate([np.asarray(arrays[n], dtype).ravel() for n in ns]))
                for g, ns in groups.items()}

    table = jnp.asarray(np.asarray(lrs, dtype=np.float64).astype(dtype))
    tx = make_optimizer(config, lambda count: table[count], {g: g == "decayed" for g in groups}, recipe.clip_norm)
    params = pack(tensors)
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for grads in grads_per_step:
        params, state = step(params, state, pack(grads))
    out = {n: np.array(tensors[n], copy=True) for n in recipe.frozen}
    for g, ns in groups.items():
        flat, offset = np.asarray(params[g]), 0
        for n in ns:
            shape = np.shape(tensors[n])
            size = int(np.prod(shape))
            out[n] = flat[offset:offset + size].reshape(shape).copy()
            offset += size
    return out
