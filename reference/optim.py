"""Optimisers of `effv2_spec.training`: SGD, RMSProp and AdamW, with coupled L2 weight decay by role.

The math is docs/internals.md, "Optimisers", word for word:

* weight decay is coupled L2: `g = g + rate * w` for tensors whose resolved role is in
  `weight_decay.applies_to`, before the optimiser sees `g` (and before clipping: the L2
  term is part of the loss, so it is part of the gradient being clipped);
* SGD, PyTorch formulation with dampening 0: `v = momentum * v + g`; `w -= lr * (g + momentum * v)`
  with nesterov, else `w -= lr * v`;
* RMSProp: `ms = decay * ms + (1 - decay) * g^2` from `initial_accumulator`; the denominator
  `sqrt(ms + eps)` or `sqrt(ms) + eps`; lr inside the momentum (TF) or outside (PyTorch);
* AdamW (torch.optim.AdamW, optax.adamw): bias-corrected Adam from the run's step count, plus the decoupled
  `w -= lr * weight_decay * w` on the tensors that decay.

`step(params, grads, lr)` mutates the parameter arrays in place (callers hold references
to them, e.g. `ReferenceModel.params`) and never mutates `grads`. Slots are created lazily
in the parameter's dtype, so float32 and float64 runs each stay in their own precision.
Which tensors decay, the clip factor and the slot names are the run's recipe (recipe.py), shared with
the PyTorch and JAX backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import numpy as np

from effv2_spec.resolve import ResolvedModel
from effv2_spec.training import SGD, AdamW, RMSProp, TrainingConfig

from .kernels.network.sgd import sgd_momentum_kernel, sgd_momentum_segments_kernel
from effv2_train.recipe import clip_factor, decayed_names


class Optimizer(ABC):
    """Shared part: weight decay by role, optional global-norm clipping, slot storage."""

    #: names of the per-tensor slots this optimiser keeps (state_dict keys are "<slot>/<param>")
    slots: tuple[str, ...] = ()

    def __init__(self, config: TrainingConfig, resolved: ResolvedModel | None):
        self.config = config
        self.decay_rate = float(config.weight_decay.rate)
        # no resolved table: nothing is known about roles, so nothing decays (never guess a role)
        self.decayed: frozenset[str] = decayed_names(config, resolved) if resolved is not None else frozenset()
        self.clip_norm = config.gradient_clip_norm
        self.state: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slots}
        self.steps = 0
        self._flat = None  # SGDOptimizer: (the tensors last stepped, their one-buffer layout or None)

    # ---- the update ------------------------------------------------------------------------
    def effective_grads(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> dict:
        """Gradients as the optimiser sees them: L2 added by role, then clipped by global norm."""
        out = {}
        for name, w in params.items():
            g = np.asarray(grads[name], dtype=w.dtype)
            if self.decay_rate and name in self.decayed:
                g = g + w.dtype.type(self.decay_rate) * w
            out[name] = g
        if self.clip_norm is not None:
            scale = clip_factor(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in out.values()),
                                self.clip_norm)
            if scale != 1.0:
                out = {k: g * g.dtype.type(scale) for k, g in out.items()}
        return out

    def step(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float,
             flat_grads: np.ndarray | None = None) -> None:
        """One update of every tensor in `params` (in place) from `grads` at learning rate `lr`.

        `flat_grads`: the same gradients as one 1-D buffer, `params`' order, when the caller has them so
        (summed over processes in one message); an optimiser may use it instead of `grads`."""
        missing = sorted(set(params) - set(grads))
        if missing:
            raise KeyError(f"optimizer step: no gradient for {', '.join(missing[:5])}")
        for name, g in self.effective_grads(params, grads).items():
            w = params[name]
            self._update(name, w, g, w.dtype.type(lr))
        self.steps += 1

    @abstractmethod
    def _update(self, name: str, w: np.ndarray, g: np.ndarray, lr) -> None:
        """Update `w` in place from the effective gradient `g` (each optimiser's own rule)."""

    def _slot(self, slot: str, name: str, like: np.ndarray, fill: float = 0.0) -> np.ndarray:
        store = self.state[slot]
        if name not in store:
            store[name] = np.full(like.shape, fill, dtype=like.dtype)
        return store[name]

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat copies of every slot ("<slot>/<param name>") plus the step count."""
        out = {f"{slot}/{name}": v.copy() for slot, store in self.state.items() for name, v in store.items()}
        out["steps"] = np.array(self.steps, dtype=np.int64)
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        fresh: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slots}
        for key, v in state.items():
            if key == "steps":
                continue
            slot, _, name = key.partition("/")
            if slot not in fresh:
                raise ValueError(f"optimizer state: unknown slot {slot!r} (this {type(self).__name__} keeps "
                                 f"{', '.join(self.slots)})")
            fresh[slot][name] = np.array(v, copy=True)
        self.state = fresh
        self.steps = int(state.get("steps", 0))
        self._flat = None  # the slots are new arrays: no longer pieces of one buffer


def consecutive_buffer(arrays: list[np.ndarray]) -> np.ndarray | None:
    """The 1-D buffer whose consecutive pieces `arrays` are (C-contiguous, in order, covering all of it), or None."""
    if not arrays or arrays[0].base is None:
        return None
    base = arrays[0].base
    if base.ndim != 1 or not base.flags.c_contiguous or base.dtype != arrays[0].dtype:
        return None
    at = base.__array_interface__["data"][0]
    for a in arrays:
        if a.base is not base or not a.flags.c_contiguous or a.__array_interface__["data"][0] != at:
            return None
        at += a.nbytes
    return base if at == base.__array_interface__["data"][0] + base.nbytes else None


class SGDOptimizer(Optimizer):
    """PyTorch SGD (dampening 0): v = m v + g; w -= lr (g + m v) (nesterov) or w -= lr v."""

    slots = SGD.slots

    def __init__(self, config: TrainingConfig, resolved):
        super().__init__(config, resolved)
        opt: SGD = config.optimizer
        self.momentum = float(opt.momentum)
        self.nesterov = bool(opt.nesterov)

    def step(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float,
             flat_grads: np.ndarray | None = None) -> None:
        """As `Optimizer.step`; without clipping, each tensor's L2 term and update are one kernel pass
        (kernels/network/sgd.py: the same operations in the same order, so the same bits), and all tensors are one
        pass when `params` are pieces of one buffer (the model's), from `flat_grads` if given."""
        if self.clip_norm is not None or self.momentum == 0.0:
            return super().step(params, grads, lr)
        missing = sorted(set(params) - set(grads))
        if missing:
            raise KeyError(f"optimizer step: no gradient for {', '.join(missing[:5])}")
        flat = self._flat_layout(params)
        if flat is not None:
            w, v, bounds, decays = flat
            t = w.dtype.type
            g = flat_grads if flat_grads is not None and flat_grads.dtype == w.dtype and flat_grads.size == w.size \
                else np.concatenate([np.ascontiguousarray(grads[n], dtype=w.dtype).reshape(-1) for n in params])
            sgd_momentum_segments_kernel(w, g, v, bounds, decays, t(lr), t(self.momentum), self.nesterov)
            self.steps += 1
            return
        for name, w in params.items():
            t = w.dtype.type
            g = np.ascontiguousarray(grads[name], dtype=w.dtype)
            v = self._slot("momentum", name, w)
            decay = self.decay_rate if name in self.decayed else 0.0
            if w.dtype in (np.float32, np.float64) and w.flags.c_contiguous and v.flags.c_contiguous:
                sgd_momentum_kernel(w.reshape(-1), g.reshape(-1), v.reshape(-1), t(lr), t(self.momentum), t(decay),
                                    self.nesterov)
            else:
                self._update(name, w, g + t(decay) * w if decay else g, t(lr))
        self.steps += 1

    def _flat_layout(self, params: dict[str, np.ndarray]):
        """(w, v, bounds, decays) when `params` are the consecutive pieces of one float buffer (the model's):
        the momentum slots then become pieces of one buffer too (their values kept), so that one kernel call
        updates every tensor. None otherwise (each tensor is then updated on its own, the same bits)."""
        arrays = tuple(params.values())  # held, not their ids: an id is reused once its array is gone
        if self._flat is not None and len(self._flat[0]) == len(arrays) and all(
                a is b for a, b in zip(self._flat[0], arrays)):
            return self._flat[1]  # None too: the same tensors are not looked at again every step
        w = consecutive_buffer(list(arrays))
        if w is None or w.dtype not in (np.float32, np.float64):
            self._flat = (arrays, None)
            return None
        v = np.empty_like(w)
        store = self.state["momentum"]
        bounds, at = [0], 0
        for name, p in params.items():
            piece = v[at:at + p.size].reshape(p.shape)
            piece[...] = store[name] if name in store else 0
            store[name] = piece
            at += p.size
            bounds.append(at)
        decays = np.array([self.decay_rate if n in self.decayed else 0.0 for n in params], dtype=w.dtype)
        self._flat = (arrays, (w, v, np.array(bounds, np.int64), decays))
        return self._flat[1]

    def _update(self, name, w, g, lr):
        if self.momentum == 0.0:
            w -= lr * g
            return
        m = w.dtype.type(self.momentum)
        v = self._slot("momentum", name, w)
        v *= m
        v += g
        if self.nesterov:
            w -= lr * (g + m * v)
        else:
            w -= lr * v


class RMSPropOptimizer(Optimizer):
    """RMSProp with the eps placement, initial accumulator and lr placement the config names."""

    slots = RMSProp.slots

    def __init__(self, config: TrainingConfig, resolved):
        super().__init__(config, resolved)
        opt: RMSProp = config.optimizer
        self.decay = float(opt.decay)
        self.momentum = float(opt.momentum)
        self.eps = float(opt.eps)
        self.inside = opt.eps_placement == "inside_sqrt"
        self.initial = float(opt.initial_accumulator)
        self.lr_in_momentum = bool(opt.lr_in_momentum)

    def _update(self, name, w, g, lr):
        t = w.dtype.type
        ms = self._slot("ms", name, w, self.initial)
        ms *= t(self.decay)
        ms += t(1.0 - self.decay) * g * g
        d = np.sqrt(ms + t(self.eps)) if self.inside else np.sqrt(ms) + t(self.eps)
        mom = self._slot("mom", name, w)
        mom *= t(self.momentum)
        if self.lr_in_momentum:
            # TF: the lr is folded into the buffer, so an lr change only affects new contributions
            mom += lr * g / d
            w -= mom
        else:
            mom += g / d
            w -= lr * mom


class AdamWOptimizer(Optimizer):
    """AdamW as the spec states it (effv2_spec.training.AdamW), step t = the optimiser's step count + 1."""

    slots = AdamW.slots

    def __init__(self, config: TrainingConfig, resolved):
        super().__init__(config, resolved)
        opt: AdamW = config.optimizer
        self.beta1, self.beta2, self.eps = float(opt.beta1), float(opt.beta2), float(opt.eps)
        self.decoupled = float(opt.weight_decay)

    def _update(self, name, w, g, lr):
        t, step = w.dtype.type, self.steps + 1  # `steps` counts once every tensor of the step is updated
        m, v = self._slot("exp_avg", name, w), self._slot("exp_avg_sq", name, w)
        m *= t(self.beta1)
        m += t(1.0 - self.beta1) * g
        v *= t(self.beta2)
        v += t(1.0 - self.beta2) * g * g
        decay = lr * t(self.decoupled) * w if self.decoupled and name in self.decayed else None  # w before the step
        w -= lr * (m / t(1.0 - self.beta1**step)) / (np.sqrt(v / t(1.0 - self.beta2**step)) + t(self.eps))
        if decay is not None:
            w -= decay


_OPTIMIZERS = {"sgd": SGDOptimizer, "rmsprop": RMSPropOptimizer, "adamw": AdamWOptimizer}


def build_optimizer(config: TrainingConfig, resolved: ResolvedModel | None = None) -> Optimizer:
    """The optimiser `config.optimizer` names, decaying the tensors of `resolved` by role."""
    kind = config.optimizer.type
    if kind in _OPTIMIZERS:
        return _OPTIMIZERS[kind](config, resolved)
    raise ValueError(f"optimizer.type: unknown optimizer {kind!r}")  # pragma: no cover - the schema forbids it
