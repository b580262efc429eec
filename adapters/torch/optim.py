"""PyTorch optimisers configured from an effv2 `TrainingConfig` (docs/internals.md, Optimisers).

SGD is torch.optim.SGD. RMSProp is torch.optim.RMSprop where that is exactly the spec
(eps outside the sqrt, accumulator starting at 0, lr outside the momentum buffer), and
otherwise `TFRMSProp`, an exact implementation of the configurable (TF) convention. AdamW is
torch.optim.AdamW, its decoupled decay in the param group of the tensors that decay (`Recipe.decays`).
The optimisers see the gradients `recipe_gradients` leaves in `.grad`: the recipe's coupled L2
(g += rate * w on the tensors of `Recipe.decays`), then its global-norm clip factor
(effv2_train.recipe), so no optimiser here carries a coupled weight decay of its own.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from effv2_spec.resolve import ResolvedModel
from effv2_spec.training import TrainingConfig
from effv2_train.recipe import SLOTS, Recipe, clip_factor


class TFRMSProp(torch.optim.Optimizer):
    """RMSProp with the spec's conventions stated:

    ms = decay * ms + (1 - decay) * g^2          (ms starts at `initial_accumulator`)
    d = sqrt(ms + eps) if eps_inside else sqrt(ms) + eps
    lr_in_momentum:  mom = momentum * mom + lr * g / d;  w -= mom
    otherwise:       buf = momentum * buf + g / d;       w -= lr * buf
    with g += weight_decay * w first (coupled L2).
    """

    def __init__(self, params: Iterable, lr: float = 0.016, decay: float = 0.9, momentum: float = 0.9,
                 eps: float = 1e-3, eps_inside: bool = True, initial_accumulator: float = 1.0,
                 lr_in_momentum: bool = True, weight_decay: float = 0.0):
        defaults = dict(lr=lr, decay=decay, momentum=momentum, eps=eps, eps_inside=eps_inside,
                        initial_accumulator=initial_accumulator, lr_in_momentum=lr_in_momentum,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, mom_c, eps = group["lr"], group["decay"], group["momentum"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["ms"] = torch.full_like(p, group["initial_accumulator"])
                    state["mom"] = torch.zeros_like(p)
                ms, mom = state["ms"], state["mom"]
                ms.mul_(decay).add_(g * g, alpha=1.0 - decay)
                d = (ms + eps).sqrt() if group["eps_inside"] else ms.sqrt().add_(eps)
                if group["lr_in_momentum"]:
                    mom.mul_(mom_c).add_(lr * g / d)
                    p.sub_(mom)
                else:
                    mom.mul_(mom_c).add_(g / d)
                    p.sub_(lr * mom)
        return loss


def torch_rmsprop_matches(opt) -> bool:
    """True when torch.optim.RMSprop computes exactly the configured RMSProp."""
    return (opt.eps_placement == "outside_sqrt" and opt.initial_accumulator == 0.0
            and (not opt.lr_in_momentum or opt.momentum == 0.0))


@torch.no_grad()
def recipe_gradients(named: Mapping[str, torch.Tensor], recipe: Recipe) -> None:
    """The gradients the optimiser steps with, in place in `.grad`: the L2 term added to the tensors that
    decay, then every gradient of `named` (the tensors stepped) multiplied by the recipe's clip factor."""
    if recipe.decay_rate:
        for name, p in named.items():
            if name in recipe.decays:
                p.grad.add_(p, alpha=recipe.decay_rate)
    if recipe.clip_norm is not None:
        factor = clip_factor(float(sum(torch.sum(p.grad.to(torch.float64) ** 2) for p in named.values())),
                             recipe.clip_norm)
        if factor != 1.0:
            for p in named.values():
                p.grad.mul_(factor)


#: each torch optimiser's state keys, in the order of the recipe's canonical slots (recipe.SLOTS)
_NATIVE_KEYS = {torch.optim.SGD: ("momentum_buffer",), torch.optim.RMSprop: ("square_avg", "momentum_buffer"),
                TFRMSProp: ("ms", "mom"), torch.optim.AdamW: ("exp_avg", "exp_avg_sq")}


def native_slot_keys(optimizer: torch.optim.Optimizer, kind: str) -> dict[str, str]:
    """Canonical slot -> the state key `optimizer` (made by `make_optimizer` for optimiser `kind`) keeps it under."""
    return dict(zip(SLOTS[kind], _NATIVE_KEYS[type(optimizer)], strict=True))


def restore_slot(optimizer: torch.optim.Optimizer, p: torch.Tensor, key: str, value: torch.Tensor, steps: int) -> None:
    """`optimizer.state[p][key] = value` (a checkpoint's slot), with the rest of the state torch's optimiser then
    expects: the step count (AdamW's bias correction counts from it) and, for RMSprop, a momentum buffer."""
    state = optimizer.state[p]
    state[key] = value
    if isinstance(optimizer, (torch.optim.RMSprop, torch.optim.AdamW)):
        state.setdefault("step", torch.tensor(float(steps)))
    if isinstance(optimizer, torch.optim.RMSprop):
        state.setdefault("momentum_buffer", torch.zeros_like(p))


def make_optimizer(named: Mapping[str, torch.Tensor], config: TrainingConfig, lr: float = 0.0,
                   decays: frozenset[str] = frozenset()) -> torch.optim.Optimizer:
    """The torch optimiser for `config` over the named tensors it steps (no coupled L2: `recipe_gradients`);
    `decays`: the tensors an AdamW's decoupled decay applies to (`Recipe.decays`)."""
    groups = [{"params": list(named.values()), "weight_decay": 0.0}]
    opt = config.optimizer
    if opt.type == "adamw":
        groups = [{"params": [p for n, p in named.items() if (n in decays) == d], "weight_decay": wd}
                  for d, wd in ((True, opt.weight_decay), (False, 0.0))]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(opt.beta1, opt.beta2),
                                 eps=opt.eps, amsgrad=False, foreach=False)
    if opt.type == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, dampening=0.0,
                               nesterov=bool(opt.nesterov and opt.momentum > 0), foreach=False)
    if torch_rmsprop_matches(opt):
        return torch.optim.RMSprop(groups, lr=lr, alpha=opt.decay, eps=opt.eps, momentum=opt.momentum,
                                   centered=False, foreach=False)
    return TFRMSProp(groups, lr=lr, decay=opt.decay, momentum=opt.momentum, eps=opt.eps,
                     eps_inside=opt.eps_placement == "inside_sqrt", initial_accumulator=opt.initial_accumulator,
                     lr_in_momentum=opt.lr_in_momentum)


def optimizer_steps(tensors: Mapping[str, np.ndarray], grads_per_step: Sequence[Mapping[str, np.ndarray]],
                    config: TrainingConfig, lrs: Sequence[float], resolved: ResolvedModel) -> dict[str, np.ndarray]:
    """Apply len(lrs) steps of the recipe from fresh optimiser state; returns every trainable tensor (those the
    recipe freezes unchanged)."""
    if len(grads_per_step) != len(lrs):
        raise ValueError(f"got {len(grads_per_step)} gradient sets for {len(lrs)} learning rates")
    recipe = Recipe.of(config, resolved)
    named = {n: torch.nn.Parameter(torch.from_numpy(np.array(tensors[n], copy=True))) for n in recipe.stepped}
    optimizer = make_optimizer(named, config, decays=recipe.decays)
    for grads, lr in zip(grads_per_step, lrs):
        for group in optimizer.param_groups:
            group["lr"] = float(lr)
        for n, p in named.items():
            p.grad = torch.from_numpy(np.asarray(grads[n], dtype=tensors[n].dtype).copy())
        recipe_gradients(named, recipe)
        optimizer.step()
    out = {n: np.array(tensors[n], copy=True) for n in recipe.frozen}
    return out | {n: p.detach().numpy().copy() for n, p in named.items()}
