"""optax optimisers configured from the spec, against the closed form of docs/internals.md and the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from effv2_adapters.jax.optim import optimizer_steps
from effv2_spec.resolve import resolve
from effv2_spec.training import SGD, RMSProp, TrainingConfig, WeightDecay

from jax_testlib import random_tensors, tiny_spec

pytestmark = pytest.mark.jax

WD = WeightDecay(rate=1e-2, applies_to=("conv_kernel", "dense_kernel", "bn_gamma"))
CONFIGS = {
    "sgd": TrainingConfig(optimizer=SGD(type="sgd", momentum=0.0), weight_decay=WD),
    "sgd-momentum": TrainingConfig(optimizer=SGD(type="sgd", momentum=0.9), weight_decay=WD),
    "sgd-nesterov": TrainingConfig(optimizer=SGD(type="sgd", momentum=0.8, nesterov=True), weight_decay=WD),
    "rmsprop-tf": TrainingConfig(optimizer=RMSProp(type="rmsprop"), weight_decay=WD),
    "rmsprop-torch": TrainingConfig(optimizer=RMSProp(type="rmsprop", eps=1e-8, eps_placement="outside_sqrt",
                                                      initial_accumulator=0.0, lr_in_momentum=False, momentum=0.5),
                                    weight_decay=WD),
    "rmsprop-lr-outside-inside-eps": TrainingConfig(optimizer=RMSProp(type="rmsprop", lr_in_momentum=False, decay=0.8),
                                                    weight_decay=WeightDecay(rate=0.0)),
    "rmsprop-no-momentum": TrainingConfig(optimizer=RMSProp(type="rmsprop", momentum=0.0, initial_accumulator=0.5),
                                          weight_decay=WD),
}


def closed_form(tensors, grads_per_step, config, lrs, resolved):
    """docs/internals.md, Optimisers, written out."""
    opt, wd = config.optimizer, config.weight_decay
    out = {}
    for p in resolved.trainable():
        w = np.array(tensors[p.name], np.float64)
        v = np.zeros_like(w)
        ms = np.full_like(w, getattr(opt, "initial_accumulator", 0.0))
        for grads, lr in zip(grads_per_step, lrs):
            g = np.asarray(grads[p.name], np.float64)
            if p.role in wd.applies_to:
                g = g + wd.rate * w
            if opt.type == "sgd":
                v = opt.momentum * v + g
                w = w - lr * ((g + opt.momentum * v) if opt.nesterov else v)
            else:
                ms = opt.decay * ms + (1 - opt.decay) * g * g
                d = np.sqrt(ms + opt.eps) if opt.eps_placement == "inside_sqrt" else np.sqrt(ms) + opt.eps
                if opt.lr_in_momentum:
                    v = opt.momentum * v + lr * g / d
                    w = w - v
                else:
                    v = opt.momentum * v + g / d
                    w = w - lr * v
        out[p.name] = w
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_optax_steps_match_the_closed_form_and_the_oracle(name):
    config = CONFIGS[name]
    resolved = resolve(tiny_spec(), 16)
    tensors = random_tensors(resolved, 7)
    rng = np.random.default_rng(8)
    grads = [{p.name: rng.standard_normal(p.shape) for p in resolved.trainable()} for _ in range(3)]
    lrs = [0.1, 0.03, 0.2]  # a changing lr separates lr_in_momentum from lr outside it
    got = optimizer_steps(tensors, grads, config, lrs, resolved)
    want = closed_form(tensors, grads, config, lrs, resolved)
    for n in want:
        step = want[n] - tensors[n]
        assert np.max(np.abs((got[n] - tensors[n]) - step)) <= 1e-12 * max(np.max(np.abs(step)), 1e-300), n
    from effv2_reference.optim import build_optimizer

    opt = build_optimizer(config, resolved)
    params = {p.name: np.array(tensors[p.name], copy=True) for p in resolved.trainable()}
    for g, lr in zip(grads, lrs):
        opt.step(params, g, lr)  # in place
    for n in params:
        assert np.max(np.abs(got[n] - params[n])) <= 1e-12 * max(np.max(np.abs(params[n] - tensors[n])), 1e-300), n


def test_float32_steps_stay_float32():
    resolved = resolve(tiny_spec(), 16)
    tensors = {k: v.astype(np.float32) for k, v in random_tensors(resolved, 1).items()}
    grads = [{p.name: np.ones(p.shape, np.float32) for p in resolved.trainable()}]
    out = optimizer_steps(tensors, grads, CONFIGS["rmsprop-tf"], [0.1], resolved)
    assert all(v.dtype == np.float32 for v in out.values())
    with pytest.raises(ValueError, match="gradient sets"):
        optimizer_steps(tensors, grads, CONFIGS["sgd"], [0.1, 0.2], resolved)
