"""PyTorch optimisers configured from an effv2 `TrainingConfig` (docs/internals.md, Optimisers).

SGD is torch.optim.SGD. RMSProp is torch.optim.RMSprop where that is exactly the spec
(eps outside the sqrt, accumulator starting at 0, lr outside the momentum buffer), and
otherwise `TFRMSProp`, an exact implementation of the configurable (TF) convention.
Weight decay is coupled L2 (g += rate * w) on the tensors whose role is listed in
`weight_decay.applies_to`, through per-group `weight_decay`.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from effv2_spec.resolve import ResolvedModel
from effv2_spec.training import TrainingConfig


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


def param_groups(named: Mapping[str, torch.Tensor], config: TrainingConfig, resolved: ResolvedModel) -> list[dict]:
    """Two groups: tensors whose role decays (weight_decay = rate) and the rest (0)."""
    wd = config.weight_decay
    roles = set(wd.applies_to)
    decay = [p for n, p in named.items() if resolved.param(n).role in roles]
    rest = [p for n, p in named.items() if resolved.param(n).role not in roles]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(wd.rate)})
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def make_optimizer(named: Mapping[str, torch.Tensor], config: TrainingConfig, resolved: ResolvedModel,
                   lr: float = 0.0) -> torch.optim.Optimizer:
    """The torch optimiser for `config` over the named trainable tensors."""
    groups = param_groups(named, config, resolved)
    opt = config.optimizer
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
    """Apply len(lrs) steps from fresh optimiser state; returns the updated trainable tensors."""
    if len(grads_per_step) != len(lrs):
        raise ValueError(f"got {len(grads_per_step)} gradient sets for {len(lrs)} learning rates")
    trainable = [p.name for p in resolved.params if p.trainable]
    named = {n: torch.nn.Parameter(torch.from_numpy(np.array(tensors[n], copy=True))) for n in trainable}
    optimizer = make_optimizer(named, config, resolved)
    for grads, lr in zip(grads_per_step, lrs):
        for group in optimizer.param_groups:
            group["lr"] = float(lr)
        for n, p in named.items():
            p.grad = torch.from_numpy(np.asarray(grads[n], dtype=tensors[n].dtype).copy())
        optimizer.step()
    return {n: p.detach().numpy().copy() for n, p in named.items()}
