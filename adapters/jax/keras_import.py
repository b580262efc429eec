"""Import Keras 3 `keras.applications.EfficientNetV2{B0..B3,S,M,L}` weights as canonical effv2 tensors.

`import_keras(path, spec)` reads a `.weights.h5` file (`model.save_weights`) or a `.keras` archive
(`model.save`, whose `model.weights.h5` member is read) with h5py alone: Keras itself is not needed.

Keras 3 stores the layers of a Functional model under `layers/<key>/vars/<i>`, where `<key>` is the
layer's class name in snake case, made unique by a counter in the order of `model.layers`
(`conv2d`, `conv2d_1`, ..., `depthwise_conv2d_3`, `batch_normalization_17`, `dense`); the layers'
own names (`block4a_se_reduce`) are not in the file. Keras's `model.layers` order is the execution
order of the resolved spec's units, so the i-th Conv2D / DepthwiseConv2D / BatchNormalization of
the file is the i-th of the spec (SE reduce and expand are Conv2D layers with a bias); every shape
is checked, and any mismatch (another variant, `include_top=False`, a different class count) is
a `WeightsError` naming the tensor.

Layouts: Conv2D kernel (kh, kw, in, out) -> OIHW by transpose(3, 2, 0, 1); DepthwiseConv2D
(kh, kw, C, 1) -> (C, 1, kh, kw) by transpose(2, 3, 0, 1); Dense (in, out) -> (out, in);
BatchNormalization gamma, beta, moving_mean, moving_variance -> weight, bias, running_mean,
running_var. Keras BN momentum 0.9 is effv2 momentum 0.1, eps 1e-3, and Keras 3 folds the biased
batch variance into moving_variance: the `efficientnetv2-*-keras` presets say so.

Preprocessing: with `include_preprocessing=True` Keras B0-B3 run Rescaling(1/255) and
Normalization(ImageNet mean, variance): (x/255 - m) / sqrt(v) = (x - 255 m) / (255 sqrt(v)), which is
the spec's in-model normalisation with mean 255 m and std 255 sqrt(v); S/M/L run Rescaling(1/128,
offset -1) = (x - 128) / 128. A `.keras` archive's config records these layers, and they are checked
against the spec's `input.normalization` (a `.weights.h5` file holds no trace of them). The classifier is imported as logits: Keras's
default `classifier_activation="softmax"` is applied after the Dense layer, so compare a Keras model
built with `classifier_activation=None`, or apply softmax to the oracle's logits.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from typing import Any

import numpy as np

from effv2_spec.resolve import ConvBN, SqueezeExcite, resolve
from effv2_spec.weights import WeightsError, check_tensors


def _h5_file(path: str | os.PathLike):
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such file")
    if zipfile.is_zipfile(path):  # a .keras archive
        with zipfile.ZipFile(path) as z:
            if "model.weights.h5" not in z.namelist():
                raise WeightsError(f"{path}: a zip file without model.weights.h5, not a Keras 3 .keras archive")
            data = z.read("model.weights.h5")
        return h5py.File(io.BytesIO(data), "r")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"{path}: not an HDF5 / .keras file ({exc})") from None


def _layers_by_class(f, path) -> dict[str, list[list[np.ndarray]]]:
    """class key -> [vars of the 1st layer, of the 2nd, ...] in model.layers order."""
    if "layers" not in f:
        raise WeightsError(f"{path}: no 'layers' group; not a Keras 3 weights file (legacy Keras 2 .h5 files are not read)")
    out: dict[str, list[tuple[int, list[np.ndarray]]]] = {}
    for key in f["layers"].keys():
        m = re.fullmatch(r"(.+?)(?:_(\d+))?", key)
        cls, index = m.group(1), int(m.group(2) or 0)
        group = f["layers"][key]
        vars_ = group["vars"] if "vars" in group else {}
        values = [np.asarray(vars_[str(i)]) for i in range(len(vars_))]
        out.setdefault(cls, []).append((index, values))
    return {cls: [v for _, v in sorted(items, key=lambda t: t[0])] for cls, items in out.items()}


def import_keras(path: str | os.PathLike, spec: Any) -> dict[str, np.ndarray]:
    """Canonical tensors (float32 as stored) from a Keras 3 EfficientNetV2 `.weights.h5` or `.keras` file."""
    resolved = spec if hasattr(spec, "units") else resolve(spec)
    with _h5_file(path) as f:
        layers = _layers_by_class(f, path)
    counters = {"conv2d": 0, "depthwise_conv2d": 0, "batch_normalization": 0, "dense": 0}

    def take(cls: str, what: str) -> list[np.ndarray]:
        i = counters[cls]
        items = layers.get(cls, [])
        if i >= len(items):
            raise WeightsError(f"{path}: the file has {len(items)} {cls} layer(s); spec {resolved.spec.name!r} needs "
                               f"one more for {what} (another variant, or saved with include_top=False?)")
        counters[cls] = i + 1
        return items[i]

    tensors: dict[str, np.ndarray] = {}

    def put(name: str, value: np.ndarray, key: str) -> None:
        want = resolved.param(name).shape
        if tuple(value.shape) != tuple(want):
            raise WeightsError(f"{path}: {key} has shape {tuple(value.shape)} after conversion, but {name} of spec "
                               f"{resolved.spec.name!r} is {tuple(want)}")
        tensors[name] = np.ascontiguousarray(value)

    for unit in resolved.units():
        if isinstance(unit, ConvBN):
            if unit.depthwise:
                (kernel,) = take("depthwise_conv2d", f"{unit.name}.conv")[:1]
                put(f"{unit.name}.conv.weight", kernel.transpose(2, 3, 0, 1), f"depthwise_conv2d #{counters['depthwise_conv2d']}")
            else:
                (kernel,) = take("conv2d", f"{unit.name}.conv")[:1]
                put(f"{unit.name}.conv.weight", kernel.transpose(3, 2, 0, 1), f"conv2d #{counters['conv2d']}")
            bn = take("batch_normalization", f"{unit.name}.bn")
            if len(bn) != 4:
                raise WeightsError(f"{path}: batch_normalization #{counters['batch_normalization']} has {len(bn)} "
                                   "variables; expected gamma, beta, moving_mean, moving_variance")
            for suffix, value in zip(("weight", "bias", "running_mean", "running_var"), bn):
                put(f"{unit.name}.bn.{suffix}", value, f"batch_normalization #{counters['batch_normalization']}")
        elif isinstance(unit, SqueezeExcite):
            for part in ("reduce", "expand"):
                values = take("conv2d", f"{unit.name}.{part}")
                if len(values) != 2:
                    raise WeightsError(f"{path}: conv2d #{counters['conv2d']} ({unit.name}.{part}) has no bias")
                put(f"{unit.name}.{part}.weight", values[0].transpose(3, 2, 0, 1), f"conv2d #{counters['conv2d']}")
                put(f"{unit.name}.{part}.bias", values[1], f"conv2d #{counters['conv2d']}")
    dense = take("dense", "classifier")
    put("classifier.weight", dense[0].T, "dense")
    put("classifier.bias", dense[1], "dense")
    left = {cls: len(layers.get(cls, [])) - n for cls, n in counters.items() if len(layers.get(cls, [])) > n}
    if left:
        raise WeightsError(f"{path}: the file has more layers than spec {resolved.spec.name!r}: "
                           + ", ".join(f"{n} extra {cls}" for cls, n in left.items()))
    _check_normalization(path, resolved)
    check_tensors(resolved, tensors)
    return tensors


def _keras_config(path) -> dict | None:
    """The model config of a .keras archive (None for a bare .weights.h5 file)."""
    import json

    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        if "config.json" not in z.namelist():
            return None
        return json.loads(z.read("config.json"))


def _check_normalization(path, resolved) -> None:
    """A .keras archive's Rescaling / Normalization layers (include_preprocessing) against the spec.

    Rescaling(scale, offset) then Normalization(m, v) is (x - (m - offset) / scale) / (sqrt(v) / scale) on raw
    pixels; Rescaling alone is (x + offset / scale) / (1 / scale). A .weights.h5 file holds no trace of them
    (the Normalization layer's statistics are constants, not variables), so nothing is checked there."""
    config = _keras_config(path)
    if config is None:
        return
    layers = (config.get("config") or {}).get("layers") or []
    scale, offset, mean, std, found = 1.0, 0.0, None, None, False
    for layer in layers:
        cls, cfg = layer.get("class_name"), layer.get("config") or {}
        if cls == "Rescaling":
            scale, offset, found = float(cfg.get("scale", 1.0)), float(cfg.get("offset", 0.0)), True
        elif cls == "Normalization" and cfg.get("mean") is not None and cfg.get("variance") is not None:
            mean = np.asarray(cfg["mean"], np.float64).reshape(-1)
            std = np.sqrt(np.asarray(cfg["variance"], np.float64).reshape(-1))
            found = True
        elif cls in ("Conv2D", "DepthwiseConv2D"):
            break
    norm = resolved.spec.input.normalization
    channels = len(norm.mean)
    if not found:
        if norm.in_model:
            raise WeightsError(f"{path}: the Keras model has no preprocessing layers (include_preprocessing=False), "
                               f"but spec {resolved.spec.name!r} normalises its input in the model; set "
                               "input.normalization.in_model to false (and normalise outside the model)")
        return
    if mean is None:
        mean, std = np.zeros(channels), np.ones(channels)
    want_mean = (mean - offset) / scale * np.ones(channels)
    want_std = std / scale * np.ones(channels)
    if (not norm.in_model or not np.allclose(norm.mean, want_mean, rtol=1e-6)
            or not np.allclose(norm.std, want_std, rtol=1e-6)):
        raise WeightsError(
            f"{path}: the Keras model normalises its input in the model as (x - {np.round(want_mean, 4).tolist()}) / "
            f"{np.round(want_std, 4).tolist()} on raw pixels; spec {resolved.spec.name!r} has mean {list(norm.mean)}, "
            f"std {list(norm.std)}, in_model {norm.in_model}. Use the matching efficientnetv2-*-keras preset.")
