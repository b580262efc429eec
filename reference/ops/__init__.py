"""Reference ops: pure forward/backward function pairs with explicit caches.

Activations inside the oracle are CNHW, (C, N, H, W): see conv.py for why. One line per op;
`get_op(name)` returns the (forward, backward) pair and names the available ops otherwise.
"""

from __future__ import annotations

from .activations import activation_backward, activation_forward, sigmoid
from .batchnorm import (BatchNormSync, batch_norm_backward, batch_norm_eval_backward, batch_norm_eval_forward,
                        batch_norm_train_forward, update_running_stats)
from .bn_silu import (BatchNormSiluCache as BatchNormSiluCache, batch_norm_silu_backward, batch_norm_silu_eval_forward,
                      batch_norm_silu_train_forward)
from .conv import conv2d_backward, conv2d_forward, conv_pads, pad
from .dense import dense_backward, dense_forward
from .loss import smooth_targets, softmax_cross_entropy
from .pool import global_avg_pool_backward, global_avg_pool_forward
from .regularize import drop_path_backward, drop_path_forward, dropout_backward, dropout_forward, keep_mask
from .resize import resize_bilinear
from .squeeze_excite import squeeze_excite_backward, squeeze_excite_forward

OPS = {
    "conv2d": (conv2d_forward, conv2d_backward),
    "batch_norm_train": (batch_norm_train_forward, batch_norm_backward),
    "batch_norm_eval": (batch_norm_eval_forward, batch_norm_eval_backward),
    "batch_norm_silu_train": (batch_norm_silu_train_forward, batch_norm_silu_backward),
    "batch_norm_silu_eval": (batch_norm_silu_eval_forward, None),  # forward only: no cache (a tape uses the pair)
    "activation": (activation_forward, activation_backward),
    "squeeze_excite": (squeeze_excite_forward, squeeze_excite_backward),
    "drop_path": (drop_path_forward, drop_path_backward),
    "dropout": (dropout_forward, dropout_backward),
    "global_avg_pool": (global_avg_pool_forward, global_avg_pool_backward),
    "dense": (dense_forward, dense_backward),
    "softmax_cross_entropy": (softmax_cross_entropy, None),  # returns (loss, dlogits) in one call
    "resize_bilinear": (resize_bilinear, None),  # forward only (data pipeline)
}


def get_op(name: str):
    """(forward, backward) for op `name`."""
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; available: {', '.join(sorted(OPS))}") from None


__all__ = [
    "OPS", "get_op", "activation_backward", "activation_forward", "sigmoid", "BatchNormSync", "batch_norm_backward",
    "batch_norm_eval_backward", "batch_norm_eval_forward", "batch_norm_silu_eval_forward", "batch_norm_train_forward",
    "update_running_stats",
    "conv2d_backward", "conv2d_forward", "conv_pads", "pad", "dense_backward", "dense_forward", "smooth_targets",
    "softmax_cross_entropy", "global_avg_pool_backward", "global_avg_pool_forward", "drop_path_backward",
    "drop_path_forward", "dropout_backward", "dropout_forward", "keep_mask", "resize_bilinear",
    "squeeze_excite_backward", "squeeze_excite_forward",
]
