"""Where each canonical tensor sits in a Keras 3 EfficientNetV2 weights file: the one table that
`keras_import` reads and `keras_export` writes through.

Keras 3 stores a Functional model's layers under `layers/<key>/vars/<i>`, `<key>` being the layer's
class in snake case made unique by a counter in `model.layers` order (`conv2d`, `conv2d_1`, ...,
`depthwise_conv2d_3`, `batch_normalization_17`, `dense`). That order is the execution order of the
resolved units, so the n-th layer of a class in the file is the n-th of the spec's units of that class:
a conv+BN unit is one Conv2D (or DepthwiseConv2D) then one BatchNormalization, an SE unit two Conv2D
with a bias (reduce, expand), the classifier one Dense. Layers without variables (activations, pooling,
Rescaling, Normalization) need no entry.

Layouts: Conv2D kernel (kh, kw, in, out) -> OIHW by transpose(3, 2, 0, 1); DepthwiseConv2D
(kh, kw, C, 1) -> (C, 1, kh, kw) by transpose(2, 3, 0, 1); Dense (in, out) -> (out, in);
BatchNormalization gamma, beta, moving_mean, moving_variance -> weight, bias, running_mean, running_var.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from effv2_spec.resolve import ConvBN, ResolvedModel, SqueezeExcite

CONV = (3, 2, 0, 1)
DEPTHWISE = (2, 3, 0, 1)
DENSE = (1, 0)
VECTOR = (0,)
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class KerasLayer:
    """One Keras layer with variables: its class key, what it is in the spec, and its variables in order
    as (canonical name, axes taking the Keras array to the canonical layout)."""

    cls: str
    what: str
    variables: tuple[tuple[str, tuple[int, ...]], ...]


def keras_layers(resolved: ResolvedModel) -> list[KerasLayer]:
    """The spec's Keras layers with variables, in `model.layers` order."""
    layers: list[KerasLayer] = []
    for unit in resolved.units():
        if isinstance(unit, ConvBN):
            cls, axes = ("depthwise_conv2d", DEPTHWISE) if unit.depthwise else ("conv2d", CONV)
            layers.append(KerasLayer(cls, f"{unit.name}.conv", ((f"{unit.name}.conv.weight", axes),)))
            layers.append(KerasLayer("batch_normalization", f"{unit.name}.bn",
                                     tuple((f"{unit.name}.bn.{t}", VECTOR) for t in BN_TENSORS)))
        elif isinstance(unit, SqueezeExcite):
            for part in ("reduce", "expand"):
                layers.append(KerasLayer("conv2d", f"{unit.name}.{part}", (
                    (f"{unit.name}.{part}.weight", CONV), (f"{unit.name}.{part}.bias", VECTOR))))
    layers.append(KerasLayer("dense", "classifier", (("classifier.weight", DENSE), ("classifier.bias", VECTOR))))
    return layers


def keras_keys(layers: list[KerasLayer]) -> list[str]:
    """Each layer's key in the file: its class key, then `_1`, `_2`, ... for later layers of that class."""
    seen: dict[str, int] = {}
    keys = []
    for layer in layers:
        n = seen.get(layer.cls, 0)
        seen[layer.cls] = n + 1
        keys.append(layer.cls if n == 0 else f"{layer.cls}_{n}")
    return keys


def to_keras(value: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """A canonical tensor in the Keras layout (the inverse of the transpose `axes`)."""
    return np.ascontiguousarray(np.asarray(value).transpose(np.argsort(axes)))


__all__ = ["KerasLayer", "keras_layers", "keras_keys", "to_keras", "BN_TENSORS"]
