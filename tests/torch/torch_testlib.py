"""Helpers shared by the PyTorch adapter tests (tests/torch)."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

torch = pytest.importorskip("torch")

from effv2_spec.architecture import ArchitectureSpec  # noqa: E402
from effv2_spec.documents import load_architecture  # noqa: E402
from effv2_spec.rounding import conv_padding as spec_conv_padding  # noqa: E402
from shared_specs import tiny_spec  # noqa: E402,F401  (re-exported to the test modules)

from asserts import rel_err  # noqa: E402

ACTIVATIONS = {  # docs/internals.md, written out
    "silu": lambda x: x * torch.sigmoid(x),
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "relu6": lambda x: torch.where(x > 0, torch.where(x < 6, x, torch.full_like(x, 6.0)), torch.zeros_like(x)),
    "hard_swish": lambda x: x * torch.where(x + 3 > 0, torch.where(x + 3 < 6, x + 3, torch.full_like(x, 6.0)),
                                             torch.zeros_like(x)) / 6,
}


def preset(name: str) -> ArchitectureSpec:
    return load_architecture(name)


def randomize_bn(model, seed: int = 1) -> None:
    """Non-trivial BN affine and running statistics in any torch model (ours, torchvision's, timm's)."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if hasattr(mod, "running_mean") and hasattr(mod, "running_var") and mod.running_mean is not None:
            with torch.no_grad():
                n = mod.running_mean.shape[0]
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(n, generator=g) * 0.1)


def rel(a, b) -> float:
    """The suite's one relative error (tests/asserts.py), for torch tensors too."""
    return rel_err(a.detach().cpu() if hasattr(a, "detach") else a, b.detach().cpu() if hasattr(b, "detach") else b)


def manual_forward(model, x, masks, training):
    """The forward written out from docs/internals.md with the model's own tensors."""
    cfg = model.config
    if cfg["normalization"]["in_model"]:
        c = x.shape[1]
        mean = torch.tensor(cfg["normalization"]["mean"], dtype=x.dtype).reshape(1, c, 1, 1)
        std = torch.tensor(cfg["normalization"]["std"], dtype=x.dtype).reshape(1, c, 1, 1)
        x = (x - mean) / std

    def conv_bn(unit, row, h):
        k, s = row["kernel"], row["stride"]
        pads = []
        for n in (h.shape[-1], h.shape[-2]):
            pads += list(spec_conv_padding(cfg["padding"], n, k, s))
        h = F.conv2d(F.pad(h, pads), unit.conv.weight, stride=s, groups=row["groups"])
        bn = unit.bn
        if training:
            mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
        else:
            mean, var = bn.running_mean, bn.running_var
        h = (h - mean[None, :, None, None]) / torch.sqrt(var + cfg["batch_norm"]["eps"])[None, :, None, None]
        h = h * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
        return ACTIVATIONS[cfg["activation"]](h) if row["activation"] else h

    h = conv_bn(model.stem, cfg["stem"], x)
    for i, (block, row) in enumerate(zip(model.blocks, cfg["blocks"])):
        x_in = h
        for layer in row["layers"]:
            unit = getattr(block, layer["name"].rsplit(".", 1)[-1])
            if layer["kind"] == "se":
                s = h.mean(dim=(2, 3), keepdim=True)
                s = F.conv2d(s, unit.reduce.weight, unit.reduce.bias)
                z = F.conv2d(ACTIVATIONS[layer["activation"]](s), unit.expand.weight, unit.expand.bias)
                s = torch.sigmoid(z) if layer["gate"] == "sigmoid" else torch.clamp(z + 3, 0, 6) / 6  # hard sigmoid
                h = h * s
            else:
                h = conv_bn(unit, layer, h)
        if row["residual"]:
            rate = row["drop_path_rate"]
            if training and rate > 0:
                h = x_in + h * masks[f"blocks.{i}.drop_path"][:, None, None, None] / (1 - rate)
            else:
                h = x_in + h
    h = conv_bn(model.head, cfg["head"], h).mean(dim=(2, 3))
    p = cfg["classifier"]["dropout"]
    if training and p > 0:
        h = h * masks["classifier.dropout"] / (1 - p)
    return h @ model.classifier.weight.T + model.classifier.bias
