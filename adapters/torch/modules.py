"""EfficientNet V1/V2 building blocks in plain PyTorch (needs nothing but torch).

This file is both the runtime of `effv2_adapters.torch` and the body of every file that
`effv2 generate --framework torch` writes, so a generated model and `build_model(spec)` run
the very same code. The network is described by a CONFIG table (see `config_from_resolved`
in effv2_adapters.network_table): each row is a resolved unit's fields under their own names,
plus the init rule of every tensor the unit owns; channel counts, kernels, strides, SE widths,
residual flags, drop-path rates and inits come from that table and are never recomputed here.

Semantics (docs/internals.md): NCHW; optional in-model input normalisation; conv + BN
(+ activation) units with TF "same" padding computed from the actual input size (or
symmetric k//2 padding); squeeze-and-excitation; residual with drop path; global average
pool, dropout, dense. BN in training normalises with the biased batch variance and
updates the running variance with the biased or unbiased estimator, as configured.

State-dict keys are the canonical effv2 parameter names (`stem.conv.weight`,
`blocks.3.se.reduce.bias`, `head.bn.running_var`, `classifier.weight`, ...) and nothing
else: there is no `num_batches_tracked`, and the input-normalisation constants are
non-persistent buffers.

Random regularisers take optional external masks: `model(x, masks)` with
`masks["blocks.<i>.drop_path"]` of shape (N,) and `masks["classifier.dropout"]` of shape
(N, features), values 0/1 (1 = keep). Missing masks are drawn from torch's generator.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


# ---- padding -------------------------------------------------------------------------------
def conv_padding(convention: str, size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """(before, after) padding along one axis: TF SAME (the extra pixel goes after) or k//2."""
    if convention == "tf_same":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    if convention == "symmetric":
        return kernel // 2, kernel // 2
    raise ValueError(f"unknown padding convention {convention!r}")


# ---- activations ---------------------------------------------------------------------------
def activate(name: str, x: torch.Tensor) -> torch.Tensor:
    """silu x*sigmoid(x); relu; relu6 min(max(x, 0), 6); hard_swish x*relu6(x + 3)/6; the SE gates
    sigmoid and hard_sigmoid relu6(x + 3)/6."""
    if name == "silu":
        return F.silu(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "hard_sigmoid":  # not F.hardsigmoid: its float64 backward uses a float32 1/6 (error 3e-8)
        return F.relu6(x + 3.0) / 6.0
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return F.relu6(x)
    if name == "hard_swish":
        return F.hardswish(x)
    raise ValueError(f"unknown activation {name!r}")


# ---- leaf modules (parameters named as the canonical table) --------------------------------
class Conv(nn.Module):
    """A conv kernel (OIHW; depthwise C x 1 x k x k), optionally with a bias, and its padding rule."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False, padding: str = "symmetric"):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(cout)) if bias else None
        self.kernel, self.stride, self.groups, self.padding = kernel, stride, groups, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel, self.stride
        if k == 1 and s == 1:
            return F.conv2d(x, self.weight, self.bias, 1, 0, 1, self.groups)
        # Python ints: the ONNX tracer would otherwise record the pad arithmetic as graph ops, whose
        # integer division truncates where ours floors (wrong pads for odd sizes next to even ones)
        top, bottom = conv_padding(self.padding, int(x.shape[-2]), k, s)
        left, right = conv_padding(self.padding, int(x.shape[-1]), k, s)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, s, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, s, 0, 1, self.groups)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return (f"{i * self.groups}, {o}, kernel={k}, stride={self.stride}, groups={self.groups}, "
                f"padding={self.padding!r}")


class BatchNorm(nn.Module):
    """BN over (N, H, W): weight, bias, running_mean, running_var; momentum in the PyTorch convention.

    Training normalises with the biased batch variance; the running variance is updated with
    the biased ('biased', TF/Keras) or the unbiased ('unbiased', PyTorch) estimator.
    """

    def __init__(self, channels: int, eps: float, momentum: float, running_var: str):
        super().__init__()
        if running_var not in ("biased", "unbiased"):
            raise ValueError(f"unknown running_var estimator {running_var!r}")
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.eps, self.momentum, self.estimator = eps, momentum, running_var
        # Statistics groups (docs/internals.md): samples of this process per group (None: its whole
        # batch); `group_sum` sums a tensor over the `group_span` processes sharing a group
        # (differentiable); `replica_mean` averages over all processes (running statistics stay
        # identical everywhere).
        self.group_size: Optional[int] = None
        self.group_span = 1
        self.group_sum = None
        self.replica_mean = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if self.group_size is not None or self.group_sum is not None or self.replica_mean is not None:
            return self._grouped(x)
        if x.shape[0] * x.shape[2] * x.shape[3] == 1:  # torch refuses one value per channel; the formula does not
            return self._single_value(x)
        if self.estimator == "unbiased":  # torch's own update folds in the unbiased variance
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True,
                                self.momentum, self.eps)
        y = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        with torch.no_grad():
            var, mean = torch.var_mean(x.detach(), dim=(0, 2, 3), correction=0)
            m = self.momentum
            self.running_mean.mul_(1.0 - m).add_(mean, alpha=m)
            self.running_var.mul_(1.0 - m).add_(var, alpha=m)
        return y

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """Batch statistics per contiguous group of samples; running statistics = mean over the groups
        of each group's (converted) statistics, then one momentum update."""
        n, c, h, w = x.shape
        g = self.group_size or n
        if n % g:
            raise ValueError(f"batch norm: a group of {g} samples does not divide this process's batch of {n}")
        xg = x.reshape(n // g, g, c, h, w)
        count = g * h * w * self.group_span
        total = xg.sum(dim=(1, 3, 4))
        if self.group_sum is not None:
            total = self.group_sum(total)
        mean = total / count
        centred = xg - mean[:, None, :, None, None]
        sq = (centred * centred).sum(dim=(1, 3, 4))
        if self.group_sum is not None:
            sq = self.group_sum(sq)
        var = sq / count
        scale = torch.rsqrt(var + self.eps) * self.weight
        y = centred * scale[:, None, :, None, None] + self.bias[None, None, :, None, None]
        with torch.no_grad():
            v = var.detach()
            if self.estimator == "unbiased":
                if count < 2:
                    raise ValueError("batch norm: the unbiased running variance needs more than one value per "
                                     f"channel in a group (got {count})")
                v = v * (count / (count - 1))
            stats = torch.stack([mean.detach().mean(dim=0), v.mean(dim=0)])
            if self.replica_mean is not None:
                stats = self.replica_mean(stats)
            m = self.momentum
            self.running_mean.mul_(1.0 - m).add_(stats[0], alpha=m)
            self.running_var.mul_(1.0 - m).add_(stats[1], alpha=m)
        return y.reshape(n, c, h, w)

    def _single_value(self, x: torch.Tensor) -> torch.Tensor:
        """n = 1: the batch variance is 0, so y = bias; the unbiased estimate is undefined, the biased one used."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.eps) * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1.0 - m).add_(mean.flatten(), alpha=m)
            self.running_var.mul_(1.0 - m).add_(var.flatten(), alpha=m)
        return y

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, momentum={self.momentum}, running_var={self.estimator!r}"


class Dense(nn.Module):
    """y = x @ weight.T + bias, weight (out, in)."""

    def __init__(self, fin: int, fout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fout, fin))
        self.bias = nn.Parameter(torch.empty(fout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


# ---- units ----------------------------------------------------------------------------------
class ConvBN(nn.Module):
    """pad -> conv (no bias) -> BN -> activation (if `act`)."""

    def __init__(self, row: dict, cfg: dict):
        super().__init__()
        self.conv = Conv(row["in_channels"], row["out_channels"], row["kernel"], row["stride"], row["groups"], False,
                         cfg["padding"])
        bn = cfg["batch_norm"]
        self.bn = BatchNorm(row["out_channels"], bn["eps"], bn["momentum"], bn["running_var"])
        self.act = row["activation"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.act is None else activate(self.act, x)


class SqueezeExcite(nn.Module):
    """x * gate(expand(act(reduce(mean_HW(x))))), 1x1 convs with bias; gate sigmoid or hard_sigmoid."""

    def __init__(self, row: dict, cfg: dict):
        super().__init__()
        self.reduce = Conv(row["channels"], row["squeeze_channels"], 1, bias=True)
        self.expand = Conv(row["squeeze_channels"], row["channels"], 1, bias=True)
        self.act, self.gate = row["activation"], row["gate"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = activate(self.act, self.reduce(s))
        return x * activate(self.gate, self.expand(s))


UNITS = {"conv_bn": ConvBN, "se": SqueezeExcite}


def keep_mask(n: int, rate: float, like: torch.Tensor) -> torch.Tensor:
    """Bernoulli(1 - rate) keep mask of shape (n,) (1 = keep), from torch's generator."""
    return (torch.rand(n, dtype=like.dtype, device=like.device) >= rate).to(like.dtype)


class Block(nn.Module):
    """Fused-MBConv or MBConv: its layers in order, then residual with drop path when it has one."""

    def __init__(self, row: dict, cfg: dict):
        super().__init__()
        self.order: List[str] = []
        for layer in row["layers"]:
            name = layer["slot"]  # expand | dw | se | project | fused
            self.add_module(name, UNITS[layer["kind"]](layer, cfg))
            self.order.append(name)
        self.residual = bool(row["residual"])
        self.drop_path_rate = float(row["drop_path_rate"])

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = x
        for name in self.order:
            out = self._modules[name](out)
        if not self.residual:
            return out
        rate = self.drop_path_rate
        if self.training and rate > 0.0:
            if mask is None:
                mask = keep_mask(x.shape[0], rate, x)
            out = out * (mask.to(out.dtype).reshape(-1, 1, 1, 1) / (1.0 - rate))
        return x + out


class EfficientNet(nn.Module):
    """stem -> blocks -> head -> global average pool -> dropout -> classifier."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.config = cfg
        norm = cfg["normalization"]
        self.normalize = bool(norm["in_model"])
        c = len(norm["mean"])
        self.register_buffer("input_mean", torch.tensor(norm["mean"], dtype=torch.float64).reshape(1, c, 1, 1),
                             persistent=False)
        self.register_buffer("input_std", torch.tensor(norm["std"], dtype=torch.float64).reshape(1, c, 1, 1),
                             persistent=False)
        self.stem = ConvBN(cfg["stem"], cfg)
        self.blocks = nn.ModuleList([Block(row, cfg) for row in cfg["blocks"]])
        self.head = ConvBN(cfg["head"], cfg)
        cls = cfg["classifier"]
        self.dropout = float(cls["dropout"])
        self.classifier = Dense(cls["in_features"], cls["out_features"])

    def features(self, x: torch.Tensor, masks: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        if self.normalize:
            x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            mask = None if masks is None else masks.get(f"blocks.{i}.drop_path")
            x = block(x, mask)
        x = self.head(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, masks: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        f = self.features(x, masks)
        if self.training and self.dropout > 0.0:
            mask = None if masks is None else masks.get("classifier.dropout")
            if mask is None:
                mask = (torch.rand(f.shape, dtype=f.dtype, device=f.device) >= self.dropout).to(f.dtype)
            f = f * mask.to(f.dtype) / (1.0 - self.dropout)
        return self.classifier(f)


# ---- initialisation and construction --------------------------------------------------------
def init_tensor(t: torch.Tensor, kind: str, scale: float, generator: Optional[torch.Generator] = None) -> None:
    """Fill `t` in place by an init rule: normal (std), truncated_normal (std, cut at 2 std), uniform (bound)."""
    with torch.no_grad():
        if kind == "zeros":
            t.zero_()
        elif kind == "ones":
            t.fill_(1.0)
        elif kind == "normal":
            t.normal_(0.0, scale, generator=generator)
        elif kind == "truncated_normal":
            nn.init.trunc_normal_(t, 0.0, scale, -2.0 * scale, 2.0 * scale, generator=generator)
        elif kind == "uniform":
            t.uniform_(-scale, scale, generator=generator)
        else:
            raise ValueError(f"unknown init kind {kind!r}")


def _init_unit(unit: nn.Module, row: dict, gen: Optional[torch.Generator]) -> None:
    """Every tensor of one unit by its row's rules, in the table's order (the generator's draw order)."""
    tensors = dict(unit.named_parameters())
    tensors.update(unit.named_buffers())
    for name, (kind, scale) in row["init"].items():
        init_tensor(tensors[name], kind, float(scale), gen)


def initialize(model: EfficientNet, generator: Optional[torch.Generator] = None) -> None:
    """Initialise every tensor, constants included, by its config row's rule (`init`: tensor -> [kind, scale])."""
    cfg = model.config
    _init_unit(model.stem, cfg["stem"], generator)
    for block, row in zip(model.blocks, cfg["blocks"]):
        for layer in row["layers"]:
            _init_unit(block._modules[layer["slot"]], layer, generator)
    _init_unit(model.head, cfg["head"], generator)
    _init_unit(model.classifier, cfg["classifier"], generator)


def build_from_config(cfg: dict, dtype: torch.dtype = torch.float32, init: bool = True,
                      seed: Optional[int] = None) -> EfficientNet:
    """Build the network described by `cfg`, in `dtype`, initialised by its init rules unless `init` is False."""
    model = EfficientNet(cfg)
    if init:
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
        initialize(model, gen)
    return model.to(dtype)
