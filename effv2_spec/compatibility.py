"""Whether weights saved for one spec can run under another: the same network, or not.

Preprocessing, sizes and training-only fields may differ; anything that changes eval-mode logits
for given weights and network input may not (padding, activations, BN epsilon, ...). Every verb
that takes weights with a spec (predict, eval, export, train --init-from) asks this one check.
"""

from __future__ import annotations

import re

from .architecture import ArchitectureSpec
from .weights import WeightsError

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
    for part in re.findall(r"[^.\[\]]+", path):
        if isinstance(d, list):
            d = d[int(part)]
        elif isinstance(d, dict) and part in d:
            d = d[part]
        else:
            return "(absent)"
    return d


def check_compatible(file_spec: ArchitectureSpec | None, spec: ArchitectureSpec, source: str, *,
                     new_classifier: bool = False) -> None:
    """Raise WeightsError when weights saved for `file_spec` describe another network than `spec`'s.

    new_classifier: the caller replaces the classifier (train --num-classes), so the class count may differ."""
    if file_spec is None:
        return
    a, b = _network_fields(file_spec), _network_fields(spec)
    if new_classifier:
        a.pop("num_classes", None)
        b.pop("num_classes", None)
    where = _first_difference(a, b)
    if where is not None:
        raise WeightsError(f"{source}: weights were made for spec {file_spec.name!r}, another network than "
                           f"{spec.name!r}: {where} is {_get(a, where)!r} there and {_get(b, where)!r} here")


__all__ = ["check_compatible"]
