"""Write canonical tensors as a Keras 3 `.weights.h5` file for `keras.applications.EfficientNetV2*`.

`export_keras(tensors, spec, path)` writes, with h5py alone, the layout `model.save_weights` gives
(`layers/<key>/vars/<i>`, float32) through `keras_layout`'s table, the one `keras_import` reads with;
`keras.applications.EfficientNetV2B0(weights=None, ...).load_weights(path)` accepts it.

Only a spec whose network a Keras application builds is written: Keras has no switch for padding,
BN eps, SE width, the expand-1 fused block or the stage table, so a spec that differs from every
`efficientnetv2-*-keras` preset in one of those is refused, naming the conventions that differ.
Training-only choices (dropout, drop path, init, BN momentum) and the class count (`classes=`) are
free. The input normalisation must be Keras's in-model preprocessing (`include_preprocessing=True`)
or outside the model (build the Keras model with `include_preprocessing=False`).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from effv2_spec.resolve import as_resolved
from effv2_spec.weights import WeightsError, atomic_write_bytes, check_tensors

from .keras_layout import keras_keys, keras_layers, to_keras

#: the Keras application each `efficientnetv2-*-keras` preset describes
KERAS_APPLICATIONS = {f"efficientnetv2-{v}-keras": f"EfficientNetV2{v.upper()}"
                      for v in ("b0", "b1", "b2", "b3", "s", "m", "l")}

#: the spec fields that fix the network a Keras application builds (the rest is training or data)
NETWORK_FIELDS = ("input.channels", "stem", "stages", "head.channels", "scaling", "conventions.padding",
                  "conventions.batch_norm.eps", "conventions.activation", "conventions.se",
                  "conventions.fused_expand1")


def _field(doc: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc[part]
    return doc


def _differences(ours: Any, theirs: Any, where: str) -> list[str]:
    """'where: ours (Keras: theirs)' for each leaf that differs (lists compared item by item)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [d for key in ours | theirs for d in _differences(ours.get(key), theirs.get(key), f"{where}.{key}")]
    if isinstance(ours, list) and isinstance(theirs, list):
        length = [f"{where}: {len(ours)} entries (Keras: {len(theirs)})"] if len(ours) != len(theirs) else []
        return length + [d for i, (a, b) in enumerate(zip(ours, theirs)) for d in _differences(a, b, f"{where}[{i}]")]
    return [] if ours == theirs else [f"{where}: {ours!r} (Keras: {theirs!r})"]


def keras_application(spec) -> str:
    """The Keras application that builds `spec`'s network, or a WeightsError naming what differs from the
    closest one."""
    from effv2_spec import presets

    ours = spec.model_dump(mode="json")
    best: tuple[list[str], str] | None = None
    for preset, application in KERAS_APPLICATIONS.items():
        keras = presets.load(preset).model_dump(mode="json")
        diffs = [d for f in NETWORK_FIELDS for d in _differences(_field(ours, f), _field(keras, f), f)]
        norm = spec.input.normalization
        if norm.in_model and (list(norm.mean), list(norm.std)) != (
                keras["input"]["normalization"]["mean"], keras["input"]["normalization"]["std"]):
            diffs.append(f"input.normalization: in the model as (x - {list(norm.mean)}) / {list(norm.std)} (Keras: "
                         f"{keras['input']['normalization']['mean']}, {keras['input']['normalization']['std']}, or "
                         "outside the model)")
        if not diffs:
            return application
        if best is None or len(diffs) < len(best[0]):
            best = (diffs, application)
    diffs, application = best
    shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    raise WeightsError(f"spec {spec.name!r} is not a network Keras builds: closest is {application}, which differs "
                       f"in {shown}")


def export_keras(tensors: dict[str, np.ndarray], spec: Any, path: str | os.PathLike) -> str:
    """Write canonical `tensors` of `spec` as a Keras 3 `.weights.h5` file (atomically); returns which
    Keras application loads it, and how."""
    import h5py

    if not str(path).endswith(".weights.h5"):
        raise WeightsError(f"{path}: a Keras weights file must end in .weights.h5 (Keras' load_weights goes by it)")
    resolved = as_resolved(spec)
    application = keras_application(resolved.spec)
    check_tensors(resolved, tensors)
    layers = keras_layers(resolved)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        root = f.create_group("layers")
        for key, layer in zip(keras_keys(layers), layers):
            group = root.create_group(key).create_group("vars")
            for i, (name, axes) in enumerate(layer.variables):
                group.create_dataset(str(i), data=to_keras(tensors[name], axes).astype(np.float32))
    atomic_write_bytes(path, buffer.getvalue())
    preprocessing = resolved.spec.input.normalization.in_model
    return (f"weights for keras.applications.{application}(weights=None, classes={resolved.num_classes}, "
            f"include_preprocessing={preprocessing}).load_weights")


__all__ = ["KERAS_APPLICATIONS", "keras_application", "export_keras"]
