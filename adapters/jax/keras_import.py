"""Import Keras 3 `keras.applications.EfficientNetV2{B0..B3,S,M,L}` weights as canonical effv2 tensors.

`import_keras(path, spec)` reads a `.weights.h5` file (`model.save_weights`) or a `.keras` archive
(`model.save`, whose `model.weights.h5` member is read) with h5py alone: Keras itself is not needed.

Where each tensor sits in the file (`layers/<key>/vars/<i>`, keys by class and order, not by the layers'
own names) and its layout is `keras_layout`'s table, which `keras_export` writes through too; every
shape is checked, and any mismatch (another variant, `include_top=False`, a different class count) is
a `WeightsError` naming the tensor. Keras BN momentum 0.9 is effv2 momentum 0.1, eps 1e-3, and Keras 3 folds the biased
batch variance into moving_variance: the `efficientnetv2-*-keras` presets say so.

Preprocessing: with `include_preprocessing=True` Keras B0-B3 run Rescaling(1/255) and
Normalization(ImageNet mean, variance): (x/255 - m) / sqrt(v) = (x - 255 m) / (255 sqrt(v)), which is
the spec's in-model normalisation with mean 255 m and std 255 sqrt(v); S/M/L run Rescaling(1/128,
offset -1) = (x - 128) / 128. A `.keras` archive's config records these layers, and they are checked
against the spec's `input.normalization` (a `.weights.h5` file holds no trace of them). The classifier is imported
as logits: Keras's default `classifier_activation="softmax"` is applied after the Dense layer, so compare a Keras model
built with `classifier_activation=None`, or apply softmax to the oracle's logits.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from typing import Any

import numpy as np

from effv2_spec.resolve import resolve
from effv2_spec.weights import WeightsError, check_tensors

from .keras_layout import keras_layers


#: Slack over the spec's float32 weights allowed for HDF5 structure in a weights file.
_H5_OVERHEAD_BYTES = 64 * 2**20


def _weights_budget(resolved) -> int:
    """The most bytes a genuine weights file of this spec can need (float64 tensors plus HDF5 structure)."""
    return 8 * sum(p.numel for p in resolved.params) + _H5_OVERHEAD_BYTES


def _h5_file(path: str | os.PathLike, budget: int):
    """An open h5py file: the file itself, or a .keras archive's `model.weights.h5` member.

    The member is decompressed into memory, so its declared size is checked against `budget` first
    (a zip bomb declares far more than any EfficientNet needs); zip and HDF5 errors are WeightsErrors.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such file")
    if zipfile.is_zipfile(path):  # a .keras archive
        try:
            with zipfile.ZipFile(path) as z:
                if "model.weights.h5" not in z.namelist():
                    raise WeightsError(f"{path}: a zip file without model.weights.h5, not a Keras 3 .keras archive")
                size = z.getinfo("model.weights.h5").file_size
                if size > budget:
                    raise WeightsError(f"{path}: model.weights.h5 declares {size:,} bytes; the spec's weights need at "
                                       f"most {budget:,} (a corrupt or hostile archive?)")
                with z.open("model.weights.h5") as member:  # the size above is the archive's word: bound the read
                    data = member.read(budget + 1)
                if len(data) > budget:
                    raise WeightsError(f"{path}: model.weights.h5 inflates to more than {budget:,} bytes although it "
                                       f"declares {size:,}; the spec's weights need at most {budget:,} (a corrupt or "
                                       "hostile archive?)")
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError,
                OSError, zlib.error) as exc:
            raise WeightsError(f"{path}: not a readable .keras archive ({exc})") from None
        source = io.BytesIO(data)
    else:
        source = path
    try:
        return h5py.File(source, "r")
    except OSError as exc:
        raise WeightsError(f"{path}: not an HDF5 / .keras file ({exc})") from None


def _layer_vars(f, key: str, path, budget: int) -> list[np.ndarray]:
    """The arrays `layers/<key>/vars/0, 1, ...` of one layer, each checked before it is read."""
    import h5py

    group = f["layers"][key]
    if not isinstance(group, h5py.Group):
        raise WeightsError(f"{path}: layers/{key} is a dataset; a Keras 3 layer is a group with 'vars'")
    vars_ = group.get("vars")
    if vars_ is None:
        return []
    if not isinstance(vars_, h5py.Group):
        raise WeightsError(f"{path}: layers/{key}/vars is not a group")
    names = list(vars_.keys())
    if sorted(names) != sorted(str(i) for i in range(len(names))):
        raise WeightsError(f"{path}: layers/{key}/vars holds {', '.join(sorted(names)[:5])}; expected 0, 1, 2, ...")
    values = []
    for i in range(len(names)):
        ds = vars_[str(i)]
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
            raise WeightsError(f"{path}: layers/{key}/vars/{i} is not a numeric array")
        if ds.size * ds.dtype.itemsize > budget:
            raise WeightsError(f"{path}: layers/{key}/vars/{i} declares {ds.shape}, larger than the spec's weights")
        values.append(np.asarray(ds))
    return values


def _layers_by_class(f, path, budget: int) -> dict[str, list[list[np.ndarray]]]:
    """class key -> [vars of the 1st layer, of the 2nd, ...] in model.layers order."""
    if "layers" not in f:
        raise WeightsError(f"{path}: no 'layers' group; not a Keras 3 weights file "
                           "(legacy Keras 2 .h5 files are not read)")
    out: dict[str, list[tuple[int, list[np.ndarray]]]] = {}
    try:
        for key in f["layers"].keys():
            m = re.fullmatch(r"(.+?)(?:_(\d{1,9}))?", key)
            cls, index = m.group(1), int(m.group(2) or 0)
            out.setdefault(cls, []).append((index, _layer_vars(f, key, path, budget)))
    except (OSError, KeyError, RuntimeError) as exc:  # h5py's errors for a damaged file
        raise WeightsError(f"{path}: a damaged HDF5 file ({exc})") from None
    return {cls: [v for _, v in sorted(items, key=lambda t: t[0])] for cls, items in out.items()}


def _oriented(value: np.ndarray, axes: tuple[int, ...], key: str, path) -> np.ndarray:
    """`value` transposed to canonical layout, or a WeightsError when it has the wrong rank."""
    if value.ndim != len(axes):
        raise WeightsError(f"{path}: {key} has {value.ndim} dimensions; expected {len(axes)}")
    return value.transpose(axes)


def import_keras(path: str | os.PathLike, spec: Any) -> dict[str, np.ndarray]:
    """Canonical tensors (float32 as stored) from a Keras 3 EfficientNetV2 `.weights.h5` or `.keras` file."""
    resolved = spec if hasattr(spec, "units") else resolve(spec)
    budget = _weights_budget(resolved)
    with _h5_file(path, budget) as f:
        layers = _layers_by_class(f, path, budget)
    counters = {"conv2d": 0, "depthwise_conv2d": 0, "batch_normalization": 0, "dense": 0}
    tensors: dict[str, np.ndarray] = {}
    for layer in keras_layers(resolved):
        i = counters[layer.cls]
        items = layers.get(layer.cls, [])
        if i >= len(items):
            raise WeightsError(f"{path}: the file has {len(items)} {layer.cls} layer(s); spec {resolved.spec.name!r} "
                               f"needs one more for {layer.what} (another variant, or saved with include_top=False?)")
        counters[layer.cls] = i + 1
        key = f"{layer.cls} #{i + 1}"
        if len(items[i]) != len(layer.variables):
            names = ", ".join(n.rsplit(".", 1)[-1] for n, _ in layer.variables)
            raise WeightsError(f"{path}: {key} ({layer.what}) has {len(items[i])} variable(s); expected "
                               f"{len(layer.variables)} ({names})")
        for (name, axes), value in zip(layer.variables, items[i]):
            value = _oriented(value, axes, key, path)
            want = resolved.param(name).shape
            if tuple(value.shape) != tuple(want):
                raise WeightsError(f"{path}: {key} has shape {tuple(value.shape)} after conversion, but {name} of "
                                   f"spec {resolved.spec.name!r} is {tuple(want)}")
            tensors[name] = np.ascontiguousarray(value)
    left = {cls: len(layers.get(cls, [])) - n for cls, n in counters.items() if len(layers.get(cls, [])) > n}
    if left:
        raise WeightsError(f"{path}: the file has more layers than spec {resolved.spec.name!r}: "
                           + ", ".join(f"{n} extra {cls}" for cls, n in left.items()))
    _check_normalization(path, resolved)
    check_tensors(resolved, tensors)
    return tensors


#: config.json of an EfficientNet is tens of kilobytes; a larger one is not read into memory.
_MAX_CONFIG_BYTES = 16 * 2**20


def _keras_config(path) -> dict | None:
    """The model config of a .keras archive (None for a bare .weights.h5 file)."""
    import json

    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            if "config.json" not in z.namelist():
                return None
            if z.getinfo("config.json").file_size > _MAX_CONFIG_BYTES:
                raise WeightsError(f"{path}: config.json is larger than {_MAX_CONFIG_BYTES // 2**20} MiB")
            config = json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError, zlib.error,
            ValueError, RecursionError) as exc:  # ValueError covers JSONDecodeError and bad UTF-8
        raise WeightsError(f"{path}: config.json is not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: config.json is not a JSON object")
    return config


def _config_layers(config: dict, path) -> list[dict]:
    """The `config.layers` list of a model config, each a dict; a WeightsError when the shape is off."""
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if layers is None:
        return []
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise WeightsError(f"{path}: config.json: config.layers is not a list of layer objects")
    return layers


def _check_normalization(path, resolved) -> None:
    """A .keras archive's Rescaling / Normalization layers (include_preprocessing) against the spec.

    Rescaling(scale, offset) then Normalization(m, v) is (x - (m - offset) / scale) / (sqrt(v) / scale) on raw
    pixels; Rescaling alone is (x + offset / scale) / (1 / scale). A .weights.h5 file holds no trace of them
    (the Normalization layer's statistics are constants, not variables), so nothing is checked there."""
    config = _keras_config(path)
    if config is None:
        return
    try:
        scale, offset, mean, std, found = _preprocessing(_config_layers(config, path))
    except (TypeError, ValueError) as exc:  # a non-numeric scale, a string mean, ...
        raise WeightsError(f"{path}: config.json: unreadable Rescaling / Normalization numbers ({exc})") from None
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
    if mean.size not in (1, channels) or std.size not in (1, channels) or scale == 0:
        raise WeightsError(f"{path}: config.json: Normalization has {mean.size} means and {std.size} variances "
                           f"(or Rescaling scale 0); the spec's input has {channels} channels")
    want_mean = (mean - offset) / scale * np.ones(channels)
    want_std = std / scale * np.ones(channels)
    if (not norm.in_model or not np.allclose(norm.mean, want_mean, rtol=1e-6)
            or not np.allclose(norm.std, want_std, rtol=1e-6)):
        raise WeightsError(
            f"{path}: the Keras model normalises its input in the model as (x - {np.round(want_mean, 4).tolist()}) / "
            f"{np.round(want_std, 4).tolist()} on raw pixels; spec {resolved.spec.name!r} has mean {list(norm.mean)}, "
            f"std {list(norm.std)}, in_model {norm.in_model}. Use the matching efficientnetv2-*-keras preset.")


def _preprocessing(layers: list[dict]) -> tuple[float, float, np.ndarray | None, np.ndarray | None, bool]:
    """(scale, offset, mean, std, found) of the Rescaling / Normalization layers before the first conv."""
    scale, offset, mean, std, found = 1.0, 0.0, None, None, False
    for layer in layers:
        cls, cfg = layer.get("class_name"), layer.get("config") or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"the config of a {cls} layer is not an object")
        if cls == "Rescaling":
            scale, offset, found = float(cfg.get("scale", 1.0)), float(cfg.get("offset", 0.0)), True
        elif cls == "Normalization" and cfg.get("mean") is not None and cfg.get("variance") is not None:
            mean = np.asarray(cfg["mean"], np.float64).reshape(-1)
            std = np.sqrt(np.asarray(cfg["variance"], np.float64).reshape(-1))
            found = True
        elif cls in ("Conv2D", "DepthwiseConv2D"):
            break
    if not all(np.isfinite(v).all() for v in (scale, offset, mean if mean is not None else 0.0,
                                               std if std is not None else 0.0)):
        raise ValueError("not finite")
    return scale, offset, mean, std, found
