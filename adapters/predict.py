"""Run canonical weights on images: one classifier over the oracle and every registered backend.

`Classifier(spec, tensors, framework)` builds the network of `spec` at its eval size in
the oracle (`reference`) or a registered adapter (torch, jax, ...) and gives logits for
NCHW batches. `check_compatible(file_spec, spec, source)` (effv2_spec.compatibility) refuses
weights saved for another network.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.compatibility import check_compatible
from effv2_spec.resolve import resolve
from effv2_spec.weights import check_tensors

from . import registry

#: the oracle plus every registered adapter (the oracle is one of them)
def frameworks() -> tuple[str, ...]:
    return tuple(dict.fromkeys(("reference", *registry.ADAPTERS)))


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
