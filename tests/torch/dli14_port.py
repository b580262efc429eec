"""An independent re-typing of d-li14/efficientnetv2.pytorch's `effnetv2.py` (HEAD 775326e), the test reference.

Written from reading that file, not derived from effv2's spec: its own `[t, c, n, s, SE]` tables, its
`_make_divisible` (divisor 8, the 10% rule), SE width `_make_divisible(block_in // 4, 8)` with two
nn.Linear layers, a fused block that is always k x k conv + BN + SiLU then 1x1 conv + BN (expand 1
included), a 24-channel stem for every variant, a 1792-channel head, no dropout, no drop path,
PyTorch's default padding (k // 2) and BatchNorm2d (eps 1e-5). Module names reproduce the port's, so
its `state_dict()` keys are the port's (`features.N.conv.M`, `...conv.6.fc.0`, `conv.0`, `classifier`).
"""

from __future__ import annotations

import torch
from torch import nn

# variant: rows of (expand t, channels c, repeats n, stride s, SE flag), as in the port's effnetv2_* functions
TABLES = {
    "s": [(1, 24, 2, 1, 0), (4, 48, 4, 2, 0), (4, 64, 4, 2, 0), (4, 128, 6, 2, 1), (6, 160, 9, 1, 1),
          (6, 256, 15, 2, 1)],
    "m": [(1, 24, 3, 1, 0), (4, 48, 5, 2, 0), (4, 80, 5, 2, 0), (4, 160, 7, 2, 1), (6, 176, 14, 1, 1),
          (6, 304, 18, 2, 1), (6, 512, 5, 1, 1)],
    "l": [(1, 32, 4, 1, 0), (4, 64, 7, 2, 0), (4, 96, 7, 2, 0), (4, 192, 10, 2, 1), (6, 224, 19, 1, 1),
          (6, 384, 25, 2, 1), (6, 640, 7, 1, 1)],
    "xl": [(1, 32, 4, 1, 0), (4, 64, 8, 2, 0), (4, 96, 8, 2, 0), (4, 192, 16, 2, 1), (6, 256, 24, 1, 1),
           (6, 512, 32, 2, 1), (6, 640, 8, 1, 1)],
}


def divisible(value: float, divisor: int = 8) -> int:
    """Round half up to a multiple of `divisor` (at least `divisor`), one divisor more if that lost > 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.SiLU()] if act else layers


class Squeeze(nn.Module):
    """Pool -> Linear -> SiLU -> Linear -> sigmoid, scaling the expanded tensor; width from the block input."""

    def __init__(self, block_in: int, channels: int):
        super().__init__()
        hidden = divisible(block_in // 4)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x):
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, se: bool):
        super().__init__()
        hidden = round(cin * expand)
        self.identity = stride == 1 and cin == cout
        if se:
            layers = conv_bn(cin, hidden, 1) + conv_bn(hidden, hidden, 3, stride, groups=hidden)
            layers.append(Squeeze(cin, hidden))
        else:
            layers = conv_bn(cin, hidden, 3, stride)
        self.conv = nn.Sequential(*layers, *conv_bn(hidden, cout, 1, act=False))

    def forward(self, x):
        return x + self.conv(x) if self.identity else self.conv(x)


class PortNet(nn.Module):
    def __init__(self, variant: str, num_classes: int = 1000):
        super().__init__()
        cin = divisible(24)
        layers: list[nn.Module] = [nn.Sequential(*conv_bn(3, cin, 3, 2))]
        for t, c, n, s, se in TABLES[variant]:
            cout = divisible(c)
            for i in range(n):
                layers.append(Block(cin, cout, s if i == 0 else 1, t, bool(se)))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.conv = nn.Sequential(*conv_bn(cin, 1792, 1))
        self.classifier = nn.Linear(1792, num_classes)

    def forward(self, x):
        return self.classifier(self.conv(self.features(x)).mean(dim=(2, 3)))


def parameter_count(variant: str) -> int:
    """sum(p.numel()) as the port's README counts it, on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in PortNet(variant).parameters())
