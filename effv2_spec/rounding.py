"""Channel and depth rounding, and TF-SAME / symmetric padding arithmetic.

Shared by `resolve` and every backend that must pad at run time (padding depends on
the input size under TF SAME, so it cannot be fixed in the resolved table).
"""

from __future__ import annotations

import math


def round_channels(channels: float, width: float, divisor: int, min_channels: int, round_limit: float) -> int:
    """Scale `channels` by `width` and round half up to a multiple of `divisor`.

    Official V2 (effnetv2_model.round_filters): max(min, int(f + d/2) // d * d), no
    correction. V1 and torchvision add one divisor when rounding lost more than
    (1 - round_limit) of the value (round_limit 0.9, the "10% rule"); 0 disables it.
    """
    scaled = channels * width
    rounded = max(min_channels, int(scaled + divisor / 2) // divisor * divisor)
    if round_limit and rounded < round_limit * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """ceil(depth * repeats), evaluated in the same float order as the official code."""
    return int(math.ceil(depth * repeats))


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    """Output length of a conv with an odd kernel under either padding convention.

    TF SAME gives ceil(size / stride); symmetric k//2 padding gives
    floor((size - 1) / stride) + 1, which is the same number for odd kernels.
    """
    return -(-size // stride)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF SAME padding (before, after) along one axis: the extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_padding(convention: str, size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding along one axis for `convention` ('tf_same' or 'symmetric')."""
    if convention == "tf_same":
        return same_padding(size, kernel, stride)
    if convention == "symmetric":
        return kernel // 2, kernel // 2
    raise ValueError(f"conventions.padding: unknown padding convention {convention!r}")
