"""A minimal PyTorch model walked from the resolved table (fallback for the benchmarks only).

Used when `effv2_adapters.torch.build_model` is unavailable. Semantics follow
docs/internals.md (run-time TF-SAME padding, biased/unbiased running variance, SE, drop
path, dropout); parameters are registered under the canonical names (dots become '__').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effv2_spec.resolve import ConvBN
from effv2_spec.rounding import conv_padding

ACT = {"silu": F.silu, "relu": F.relu, "relu6": F.relu6, "hard_swish": F.hardswish}


class WalkedModel(nn.Module):
    def __init__(self, resolved, tensors: dict, dtype=torch.float32):
        super().__init__()
        self.r = resolved
        for name, v in tensors.items():
            t = torch.tensor(v, dtype=dtype)
            entry = resolved.param(name)
            if entry.trainable:
                self.register_parameter(name.replace(".", "__"), nn.Parameter(t))
            else:
                self.register_buffer(name.replace(".", "__"), t)

    def t(self, name):
        return getattr(self, name.replace(".", "__"))

    def _conv_bn(self, u, h):
        r = self.r
        pt, pb = conv_padding(r.padding, h.shape[2], u.kernel, u.stride)
        pl, pr = conv_padding(r.padding, h.shape[3], u.kernel, u.stride)
        h = F.conv2d(F.pad(h, (pl, pr, pt, pb)), self.t(f"{u.name}.conv.weight"), stride=u.stride, groups=u.groups)
        p = f"{u.name}.bn"
        rm, rv = self.t(f"{p}.running_mean"), self.t(f"{p}.running_var")
        if self.training:
            n = h.shape[0] * h.shape[2] * h.shape[3]
            mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                v = var * (n / (n - 1) if r.bn_running_var == "unbiased" else 1.0)
                rm.mul_(1 - r.bn_momentum).add_(r.bn_momentum * mean)
                rv.mul_(1 - r.bn_momentum).add_(r.bn_momentum * v)
            h = F.batch_norm(h, mean, var, self.t(f"{p}.weight"), self.t(f"{p}.bias"), False, 0.0, r.bn_eps)
        else:
            h = F.batch_norm(h, rm, rv, self.t(f"{p}.weight"), self.t(f"{p}.bias"), False, 0.0, r.bn_eps)
        return ACT[r.activation](h) if u.activation else h

    def _se(self, u, h):
        act = ACT[self.r.activation]
        s = act(F.conv2d(h.mean(dim=(2, 3), keepdim=True), self.t(f"{u.name}.reduce.weight"),
                         self.t(f"{u.name}.reduce.bias")))
        return h * torch.sigmoid(F.conv2d(s, self.t(f"{u.name}.expand.weight"), self.t(f"{u.name}.expand.bias")))

    def forward(self, x):
        r = self.r
        h = self._conv_bn(r.stem, x)
        for b in r.blocks:
            x_in = h
            for layer in b.layers:
                h = self._conv_bn(layer, h) if isinstance(layer, ConvBN) else self._se(layer, h)
            if b.residual:
                if self.training and b.drop_path_rate > 0:
                    keep = (torch.rand(h.shape[0], dtype=h.dtype) >= b.drop_path_rate).to(h.dtype)
                    h = h * keep[:, None, None, None] / (1 - b.drop_path_rate)
                h = x_in + h
        f = self._conv_bn(r.head, h).mean(dim=(2, 3))
        if self.training and r.classifier.dropout > 0:
            f = F.dropout(f, r.classifier.dropout)
        return F.linear(f, self.t("classifier.weight"), self.t("classifier.bias"))


def build_torch_model(resolved, tensors: dict, dtype=torch.float32):
    """(module, how): the adapter's model when available (preferred), else this walker; weights loaded."""
    try:
        from effv2_adapters.torch import build_model

        model = build_model(resolved, dtype, init=False)
        model.load_state_dict({k: torch.tensor(v, dtype=dtype) for k, v in tensors.items()}, strict=True)
        return model, "effv2_adapters.torch.build_model"
    except Exception:  # the adapter is developed separately; the benchmark must still run
        return WalkedModel(resolved, tensors, dtype), "bench/torch_walker.py"
