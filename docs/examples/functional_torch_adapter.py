"""A third-party effv2 backend in one file: EfficientNet written with torch.nn.functional.

It lives outside the effv2 package and is loaded by name:

    PYTHONPATH=docs/examples effv2 check efficientnetv2-nano --framework functional_torch_adapter:FunctionalTorch
    PYTHONPATH=docs/examples effv2 conformance --framework functional_torch_adapter:FunctionalTorch

It walks the resolved tables (`effv2_spec.resolve.ResolvedModel`) and nothing else of effv2:
every unit carries its kernel, stride, groups, activation and SE gate, so the network is the
loop at the bottom of `_logits`. It implements the four required methods of
`effv2_adapters.conformance.protocol.Adapter` and no optional capability, so `effv2 check`
reports the optimiser checks as "not run: capability missing".
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "relu6": F.relu6, "hard_swish": F.hardswish,
               "sigmoid": torch.sigmoid,
               # not F.hardsigmoid: its float64 backward multiplies by a float32 1/6 (relative error 3e-8)
               "hard_sigmoid": lambda x: F.relu6(x + 3.0) / 6.0}


def same_padding(size: int, kernel: int, stride: int, convention: str) -> tuple[int, int]:
    """(before, after): TF "SAME" puts the odd pixel after; "symmetric" pads k // 2 on both sides."""
    if convention == "symmetric":
        return kernel // 2, kernel // 2
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Model:
    """The resolved tables plus canonical tensors (params require grad; buffers updated in place)."""

    def __init__(self, resolved, dtype, tensors):
        self.resolved = resolved
        self.dtype = getattr(torch, str(np.dtype(dtype)))
        self.t = {p.name: torch.tensor(np.asarray(tensors[p.name]), dtype=self.dtype).requires_grad_(p.trainable)
                  for p in resolved.params}


class FunctionalTorch:
    name = "functional-torch"

    def bn_eps(self, resolved) -> float:
        return resolved.bn_eps

    def build(self, resolved, dtype, tensors=None):
        if tensors is None:  # our own init: each tensor by its resolved rule
            rng = np.random.default_rng(0)
            draw = {"zeros": lambda p: np.zeros(p.shape), "ones": lambda p: np.ones(p.shape),
                    "normal": lambda p: rng.normal(0, p.init.scale, p.shape),
                    "truncated_normal": lambda p: np.clip(rng.normal(0, p.init.scale, p.shape), -2 * p.init.scale,
                                                          2 * p.init.scale),
                    "uniform": lambda p: rng.uniform(-p.init.scale, p.init.scale, p.shape)}
            tensors = {p.name: draw[p.init.kind](p) for p in resolved.params}
        return Model(resolved, dtype, tensors)

    def forward(self, model, x, *, training, masks=None):
        with torch.no_grad():
            return self._logits(model, x, training, masks).numpy().copy()

    def forward_backward(self, model, x, dlogits, *, masks=None):
        for v in model.t.values():
            v.grad = None
        logits = self._logits(model, x, True, masks)
        (logits * torch.as_tensor(np.asarray(dlogits), dtype=model.dtype)).sum().backward()
        grads = {p.name: model.t[p.name].grad.numpy().copy() for p in model.resolved.trainable()}
        return logits.detach().numpy().copy(), grads

    def export_tensors(self, model):
        return {k: v.detach().numpy().copy() for k, v in model.t.items()}

    # ---- the network, from docs/internals.md -------------------------------------------------
    def _logits(self, model, x, training, masks):
        r, t = model.resolved, model.t
        masks = {k: torch.as_tensor(np.asarray(v), dtype=model.dtype) for k, v in (masks or {}).items()}
        x = torch.as_tensor(np.asarray(x), dtype=model.dtype)
        if r.normalize_in_model:
            mean = torch.tensor(r.input_mean, dtype=model.dtype)[None, :, None, None]
            std = torch.tensor(r.input_std, dtype=model.dtype)[None, :, None, None]
            x = (x - mean) / std
        eps = self.bn_eps(r)

        def conv_bn(u, h):
            top, bottom = same_padding(h.shape[2], u.kernel, u.stride, r.padding)
            left, right = same_padding(h.shape[3], u.kernel, u.stride, r.padding)
            h = F.conv2d(F.pad(h, (left, right, top, bottom)), t[f"{u.name}.conv.weight"], stride=u.stride,
                         groups=u.groups)
            bn = f"{u.name}.bn"
            if training:
                mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
                n = h.shape[0] * h.shape[2] * h.shape[3]
                with torch.no_grad():
                    running = var * (n / (n - 1) if r.bn_running_var == "unbiased" else 1.0)
                    t[f"{bn}.running_mean"].mul_(1 - r.bn_momentum).add_(r.bn_momentum * mean)
                    t[f"{bn}.running_var"].mul_(1 - r.bn_momentum).add_(r.bn_momentum * running)
            else:
                mean, var = t[f"{bn}.running_mean"], t[f"{bn}.running_var"]
            h = (h - mean[None, :, None, None]) / torch.sqrt(var + eps)[None, :, None, None]
            h = h * t[f"{bn}.weight"][None, :, None, None] + t[f"{bn}.bias"][None, :, None, None]
            return ACTIVATIONS[u.activation](h) if u.activation else h

        def squeeze_excite(u, h):
            s = h.mean(dim=(2, 3), keepdim=True)
            s = ACTIVATIONS[u.activation](F.conv2d(s, t[f"{u.name}.reduce.weight"], t[f"{u.name}.reduce.bias"]))
            return h * ACTIVATIONS[u.gate](F.conv2d(s, t[f"{u.name}.expand.weight"], t[f"{u.name}.expand.bias"]))

        h = conv_bn(r.stem, x)
        for block in r.blocks:
            skip = h
            for unit in block.layers:
                h = squeeze_excite(unit, h) if unit.kind == "se" else conv_bn(unit, h)
            if block.residual:
                if training and block.drop_path_rate > 0:
                    h = h * masks[f"{block.name}.drop_path"][:, None, None, None] / (1 - block.drop_path_rate)
                h = skip + h
        f = conv_bn(r.head, h).mean(dim=(2, 3))
        if training and r.classifier.dropout > 0:
            f = f * masks["classifier.dropout"] / (1 - r.classifier.dropout)
        return F.linear(f, t["classifier.weight"], t["classifier.bias"])
