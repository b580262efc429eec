"""Run canonical weights on images: one classifier over the oracle and every registered backend.

`Classifier(spec, tensors, framework)` builds the network of `spec` at its eval size in
the oracle (`reference`) or a registered adapter (torch, jax, ...) and gives logits for
NCHW batches. `compatible(file_spec, spec)` says whether weights saved for one spec can
run under another (same network; preprocessing and training-only fields may differ).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.resolve import resolve
from effv2_spec.weights import WeightsError, check_tensors

from . import registry

#: the oracle plus every registered adapter (the oracle is one of them)
def frameworks() -> tuple[str, ...]:
    return tuple(dict.fromkeys(("reference", *registry.ADAPTERS)))


#: fields that do not change eval-mode logits for given weights and network input
_EVAL_IRRELEVANT = (
    ("name",), ("input", "train_image_size"), ("input", "eval_image_size"), ("input", "eval_preprocessing"),
    ("head", "dropout"), ("conventions", "stochastic_depth"), ("conventions", "init"),
    ("conventions", "batch_norm", "momentum"), ("conventions", "batch_norm", "running_var"),
)


def _network_fields(spec: ArchitectureSpec) -> dict:
    d = spec.model_dump(mode="json")
    for path in _EVAL_IRRELEVANT:
        node = d
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    if not spec.input.normalization.in_model:  # normalisation outside the model is the input's business
        d["input"]["normalization"] = {"in_model": False}
    return d


def _first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                return where
            found = _first_difference(a[key], b[key], where)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else (path or "(root)")


def _get(d, path: str):
    import re

    for part in re.findall(r"[^.\[\]]+", path):
        if isinstance(d, list):
            d = d[int(part)]
        elif isinstance(d, dict) and part in d:
            d = d[part]
        else:
            return "(absent)"
    return d


def check_compatible(file_spec: ArchitectureSpec | None, spec: ArchitectureSpec, source: str) -> None:
    """Raise WeightsError when weights saved for `file_spec` describe another network than `spec`'s."""
    if file_spec is None:
        return
    a, b = _network_fields(file_spec), _network_fields(spec)
    where = _first_difference(a, b)
    if where is not None:
        raise WeightsError(f"{source}: weights were made for spec {file_spec.name!r}, another network than "
                           f"{spec.name!r}: {where} is {_get(a, where)!r} there and {_get(b, where)!r} here")


class Classifier:
    """Logits of `spec`'s network with canonical `tensors`, in the oracle or a registered backend."""

    def __init__(self, spec: ArchitectureSpec, tensors: Mapping[str, np.ndarray], framework: str = "reference",
                 dtype: str = "float32", image_size: int | None = None, adapter=None):
        size = int(image_size if image_size is not None else spec.input.eval_image_size)
        self.spec, self.framework, self.dtype, self.image_size = spec, framework, dtype, size
        resolved = resolve(spec, size)
        check_tensors(resolved, dict(tensors))
        if framework == "reference":
            from effv2_reference.model import ReferenceModel

            model = ReferenceModel(resolved, dtype=dtype)
            model.load_state_dict(tensors)
            self._forward = lambda x: model.forward(x, training=False)
        else:
            adapter = adapter if adapter is not None else registry.get_adapter(framework)
            net = adapter.build(resolved, dtype, dict(tensors))
            self._forward = lambda x: adapter.forward(net, x, training=False)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, num_classes) float64 logits for NCHW input x."""
        return np.asarray(self._forward(np.asarray(x, dtype=self.dtype)), dtype=np.float64)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """(N, k) class indices by descending logit; ties go to the lower index (stable)."""
    k = min(k, logits.shape[-1])
    return np.argsort(-logits, axis=-1, kind="stable")[:, :k]


__all__ = ["Classifier", "check_compatible", "frameworks", "softmax", "top_k"]
