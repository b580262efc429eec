"""Unit ops: the oracle's forward and backward of one resolved unit (`effv2_spec.resolve`: ConvBN, SqueezeExcite).

`UNIT_OPS[unit.kind]` is a (forward, backward) pair, as the torch and JAX modules build one module per
unit kind (`UNITS` in adapters/*/modules.py). A unit op reads the unit's own fields (kernel, stride,
groups, activation, gate, ...) and its tensors, so a new unit field is read here and nowhere else; the
model (model.py) only walks the units and dispatches on `unit.kind`.

    forward(unit, tensors, x, conventions, mode) -> (y, cache)      cache None unless mode.record
    backward(unit, tensors, dy, cache, conventions, need_dx) -> (dx, {canonical name: gradient})

`tensors` is the unit's `UnitTensors`: its tensors by local name ('conv.weight', 'bn.running_mean',
'reduce.bias': the canonical name less the unit's name), the model's own arrays, collected once by
`unit_tensors`. `conventions` holds the model-wide numbers (padding, BN eps, momentum, running-variance
convention), `mode` how this forward runs BN and whether it keeps a cache. Activations are CNHW.
The arithmetic is that of the array ops in ops/, in the same order (the model's numbers do not depend on
this layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from . import ops

# BN + SiLU as one op (ops/bn_silu.py), train mode and tape-less eval; off, the two ops run apart
# (the tests compare them)
FUSE_BN_SILU = True


@dataclass(frozen=True)
class Conventions:
    """The model-wide numbers a unit op needs (from `ResolvedModel`)."""

    padding: str
    bn_eps: float
    bn_momentum: float
    bn_running_var: str

    @classmethod
    def of(cls, resolved) -> "Conventions":
        return cls(resolved.padding, resolved.bn_eps, resolved.bn_momentum, resolved.bn_running_var)


@dataclass(frozen=True)
class RunMode:
    """How one forward runs: train-mode BN with batch statistics in `groups` contiguous groups of samples
    (`sync`: shared with other processes, ops/batchnorm.py), or the running statistics (batch_stats False);
    `record`: keep a cache for the backward."""

    batch_stats: bool
    groups: int = 1
    sync: ops.BatchNormSync | None = None
    record: bool = False


class UnitTensors(dict):
    """A unit's tensors by local name (a dict of the model's arrays); `names` maps a local name to the
    canonical one."""

    def __init__(self, arrays: Mapping[str, np.ndarray], names: Mapping[str, str]):
        super().__init__(arrays)
        self.names = dict(names)


def unit_tensors(resolved, tensors: Mapping[str, np.ndarray]) -> dict[str, UnitTensors]:
    """{unit name: UnitTensors} for every unit owning a tensor of `resolved.params` (`ParamEntry.unit`),
    holding the arrays of `tensors` (canonical name -> array) themselves, not copies."""
    arrays: dict[str, dict] = {}
    names: dict[str, dict] = {}
    for entry in resolved.params:
        local = entry.name[len(entry.unit) + 1:]  # canonical name = unit name + "." + local name
        arrays.setdefault(entry.unit, {})[local] = tensors[entry.name]
        names.setdefault(entry.unit, {})[local] = entry.name
    return {unit: UnitTensors(arrays[unit], names[unit]) for unit in arrays}


# ---- conv -> BN -> activation ------------------------------------------------------------------
class ConvBNCache(NamedTuple):
    conv: object
    bn: object  # BatchNormCache, BatchNormSiluCache (fused), BN's input (running statistics) or None
    act: object


def conv_bn_forward(unit, t: UnitTensors, x: np.ndarray, conventions: Conventions, mode: RunMode):
    """conv, BN, activation (unit.activation, None: none); BN + SiLU fused where `FUSE_BN_SILU` allows."""
    pads = ops.conv_pads(conventions.padding, x.shape[2:], unit.kernel, unit.stride)
    h, conv_cache = ops.conv2d_forward(x, t["conv.weight"], stride=unit.stride, pads=pads, groups=unit.groups)
    gamma, beta = t["bn.weight"], t["bn.bias"]
    rm, rv = t["bn.running_mean"], t["bn.running_var"]
    eps = conventions.bn_eps
    # BN + SiLU, the usual tail, runs fused (ops/bn_silu.py: the same bits, fewer passes); in eval mode only
    # without a tape, since the fused eval op keeps nothing for a backward
    fused = FUSE_BN_SILU and unit.activation == "silu" and (mode.batch_stats or not mode.record)
    if mode.batch_stats:
        train_forward = ops.batch_norm_silu_train_forward if fused else ops.batch_norm_train_forward
        h, bn_cache, mean, var = train_forward(h, gamma, beta, eps=eps, groups=mode.groups, sync=mode.sync)
        _update_running_stats(rm, rv, mean, var, h.shape, conventions, mode)
    elif fused:
        bn_cache = None
        h = ops.batch_norm_silu_eval_forward(h, gamma, beta, rm, rv, eps=eps)
    else:
        # an affine map; its backward needs only the input (for dgamma), which the cache keeps
        bn_cache = h if mode.record else None
        h = ops.batch_norm_eval_forward(h, gamma, beta, rm, rv, eps=eps)
    act_cache = None
    if unit.activation and not fused:
        h, act_cache = ops.activation_forward(unit.activation, h)
    return h, (ConvBNCache(conv_cache, bn_cache, act_cache) if mode.record else None)


def _update_running_stats(rm, rv, mean, var, shape, conventions: Conventions, mode: RunMode) -> None:
    """The running-statistics rule of ops/batchnorm.py after a train-mode BN on CNHW activations of `shape`."""
    sync = mode.sync
    n = shape[1] // mode.groups * shape[2] * shape[3]  # values per channel in one group
    if sync is not None and sync.group_sum is not None:
        n *= sync.span
    ops.update_running_stats(rm, rv, mean, var, n, momentum=conventions.bn_momentum,
                             running_var_kind=conventions.bn_running_var,
                             replica_mean=sync.replica_mean if sync is not None else None)


def conv_bn_backward(unit, t: UnitTensors, dy: np.ndarray, cache: ConvBNCache, conventions: Conventions,
                     need_dx: bool = True):
    """(dx, gradients of conv.weight, bn.weight and bn.bias by canonical name); dx None unless need_dx."""
    g, bn_cache = dy, cache.bn
    if isinstance(bn_cache, ops.BatchNormSiluCache):
        g, dgamma, dbeta = ops.batch_norm_silu_backward(g, bn_cache)
    else:
        if unit.activation:
            g = ops.activation_backward(unit.activation, g, cache.act)
        if isinstance(bn_cache, np.ndarray):  # running statistics: the cache is BN's input
            g, dgamma, dbeta = ops.batch_norm_eval_backward(g, bn_cache, t["bn.weight"], t["bn.running_mean"],
                                                            t["bn.running_var"], eps=conventions.bn_eps)
        else:
            g, dgamma, dbeta = ops.batch_norm_backward(g, bn_cache)
    g, dw = ops.conv2d_backward(g, cache.conv, need_dx=need_dx)
    names = t.names
    return g, {names["bn.weight"]: dgamma, names["bn.bias"]: dbeta, names["conv.weight"]: dw}


# ---- squeeze and excitation ----------------------------------------------------------------------
_SE_TENSORS = ("reduce.weight", "reduce.bias", "expand.weight", "expand.bias")


def se_forward(unit, t: UnitTensors, x: np.ndarray, conventions: Conventions, mode: RunMode):
    """x * gate(expand(act(reduce(mean_HW(x))))) with the unit's activation and gate."""
    y, cache = ops.squeeze_excite_forward(x, *(t[k] for k in _SE_TENSORS), activation=unit.activation,
                                          gate=unit.gate)
    return y, (cache if mode.record else None)


def se_backward(unit, t: UnitTensors, dy: np.ndarray, cache, conventions: Conventions, need_dx: bool = True):
    """(dx, gradients of the two 1x1 convs' weights and biases by canonical name); dx always computed."""
    dx, *grads = ops.squeeze_excite_backward(dy, cache, activation=unit.activation)
    return dx, {t.names[k]: d for k, d in zip(_SE_TENSORS, grads)}


#: unit kind -> (forward, backward)
UNIT_OPS = {
    "conv_bn": (conv_bn_forward, conv_bn_backward),
    "se": (se_forward, se_backward),
}
