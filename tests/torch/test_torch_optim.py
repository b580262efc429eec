"""Optimisers: torch.optim.SGD / RMSprop / TFRMSProp against the formulas of docs/internals.md."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from effv2_adapters.torch.optim import (TFRMSProp, make_optimizer, optimizer_steps, recipe_gradients,
                                        torch_rmsprop_matches)
from effv2_train.recipe import Recipe
from effv2_spec.resolve import resolve
from effv2_spec.training import SGD, RMSProp, TrainingConfig, WeightDecay

from torch_testlib import tiny_spec

RESOLVED = resolve(tiny_spec())


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    tensors = {p.name: rng.standard_normal(p.shape) for p in RESOLVED.params}
    grads = [{p.name: rng.standard_normal(p.shape) for p in RESOLVED.trainable()} for _ in range(3)]
    return tensors, grads, [0.1, 0.05, 0.02]


def _reference(tensors, grads_per_step, config, lrs):
    """docs/internals.md, Optimisers, in NumPy."""
    opt, wd = config.optimizer, config.weight_decay
    w = {p.name: tensors[p.name].copy() for p in RESOLVED.trainable()}
    state = {}
    for grads, lr in zip(grads_per_step, lrs):
        for n in w:
            g = grads[n] + (wd.rate * w[n] if RESOLVED.param(n).role in wd.applies_to else 0.0)
            if opt.type == "sgd":
                v = state.get(n, np.zeros_like(g))
                v = opt.momentum * v + g
                state[n] = v
                w[n] = w[n] - lr * ((g + opt.momentum * v) if opt.nesterov else v)
            else:
                ms, mom = state.get(n, (np.full_like(g, opt.initial_accumulator), np.zeros_like(g)))
                ms = opt.decay * ms + (1 - opt.decay) * g**2
                d = np.sqrt(ms + opt.eps) if opt.eps_placement == "inside_sqrt" else np.sqrt(ms) + opt.eps
                if opt.lr_in_momentum:
                    mom = opt.momentum * mom + lr * g / d
                    w[n] = w[n] - mom
                else:
                    mom = opt.momentum * mom + g / d
                    w[n] = w[n] - lr * mom
                state[n] = (ms, mom)
    return w


WD = [WeightDecay(rate=0.0), WeightDecay(rate=1e-2), WeightDecay(rate=0.1, applies_to=("bn_gamma", "se_bias"))]


@pytest.mark.parametrize("momentum,nesterov,wd", list(itertools.product([0.0, 0.9], [False, True], WD)))
def test_sgd(momentum, nesterov, wd):
    config = TrainingConfig(optimizer=SGD(type="sgd", momentum=momentum, nesterov=nesterov), weight_decay=wd)
    tensors, grads, lrs = _setup()
    got = optimizer_steps(tensors, grads, config, lrs, RESOLVED)
    expected = _reference(tensors, grads, config, lrs)
    for n in expected:
        assert np.max(np.abs(got[n] - expected[n])) <= 1e-14 * max(1.0, np.max(np.abs(expected[n]))), n


RMS = list(itertools.product(["inside_sqrt", "outside_sqrt"], [0.0, 1.0], [False, True], [0.0, 0.9]))


@pytest.mark.parametrize("eps_placement,acc,lr_in_momentum,momentum", RMS)
def test_rmsprop_every_convention(eps_placement, acc, lr_in_momentum, momentum):
    opt = RMSProp(type="rmsprop", eps_placement=eps_placement, initial_accumulator=acc, lr_in_momentum=lr_in_momentum,
                  momentum=momentum, decay=0.8, eps=1e-3)
    config = TrainingConfig(optimizer=opt, weight_decay=WD[1])
    tensors, grads, lrs = _setup(1)
    got = optimizer_steps(tensors, grads, config, lrs, RESOLVED)
    expected = _reference(tensors, grads, config, lrs)
    for n in expected:
        assert np.max(np.abs(got[n] - expected[n])) <= 1e-13 * max(1.0, np.max(np.abs(expected[n]))), n
    named = {n: torch.nn.Parameter(torch.zeros(1)) for n in ("stem.conv.weight",)}
    chosen = make_optimizer(named, config)
    uses_torch = eps_placement == "outside_sqrt" and acc == 0.0 and (not lr_in_momentum or momentum == 0.0)
    assert torch_rmsprop_matches(opt) == uses_torch
    assert isinstance(chosen, torch.optim.RMSprop if uses_torch else TFRMSProp)


def test_official_recipe_is_tf_rmsprop_with_decay_on_kernels_only():
    """The optimiser carries no weight decay: the recipe adds L2 to the kernels' gradients (before clipping)."""
    config = TrainingConfig()
    named = {p.name: torch.nn.Parameter(torch.ones(p.shape, dtype=torch.float64)) for p in RESOLVED.trainable()}
    opt = make_optimizer(named, config)
    assert isinstance(opt, TFRMSProp) and all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    for p in named.values():
        p.grad = torch.zeros_like(p)
    recipe_gradients(named, Recipe.of(config, RESOLVED))
    for n, p in named.items():
        kernel = RESOLVED.param(n).role in ("conv_kernel", "depthwise_kernel", "se_kernel", "dense_kernel")
        assert float(p.grad.abs().max()) == (config.weight_decay.rate if kernel else 0.0), n


def test_mismatched_steps_rejected():
    tensors, grads, _ = _setup()
    with pytest.raises(ValueError, match="gradient sets"):
        optimizer_steps(tensors, grads, TrainingConfig(), [0.1], RESOLVED)
