"""`ReferenceAdapter`: the NumPy/Numba oracle behind the same protocol as every other backend.

The harness compares any two adapters; this one is the default baseline. It cannot emit
source (it is a library, not a code generator), so `effv2 generate --framework reference`
says so instead of writing a file.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .adapter_base import PackagedAdapter


class ReferenceAdapter(PackagedAdapter):
    """The oracle's model and optimisers. It trains with its own `effv2 train` trainer (processes sharing
    memory), not through a `trainer` capability, and its parts live in effv2_reference."""

    name = "reference"
    requires, requirement, extra = ("effv2_reference.model",), "the reference oracle (numba)", "reference"

    def build(self, resolved, dtype, tensors: Mapping[str, np.ndarray] | None = None):
        from effv2_reference.model import ReferenceModel

        model = ReferenceModel(resolved, dtype=str(np.dtype(dtype)))
        if tensors is not None:
            model.load_state_dict(tensors)
        return model

    def forward(self, model, x, *, training: bool, masks: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        return np.array(model.forward(np.asarray(x), training=training, masks=masks), copy=True)

    def forward_backward(self, model, x, dlogits, *, masks=None):
        logits = self.forward(model, x, training=True, masks=masks)
        grads = model.backward(np.asarray(dlogits, dtype=model.dtype))
        return logits, {k: np.array(v, copy=True) for k, v in grads.items()}

    def export_tensors(self, model) -> dict[str, np.ndarray]:
        return model.state_dict()

    emit_source = None  # a library, not a code generator: `effv2 generate` says so

    def optimizer_steps(self, tensors, grads_per_step: Sequence[Mapping[str, np.ndarray]], config, lrs,
                        resolved) -> dict[str, np.ndarray]:
        """Every trainable tensor after the steps; those the recipe freezes come back unchanged."""
        from effv2_reference.optim import build_optimizer
        from effv2_train.recipe import Recipe

        opt = build_optimizer(config, resolved)
        dtype = np.result_type(*[np.asarray(v).dtype for v in tensors.values()])
        params = {p.name: np.array(tensors[p.name], dtype=dtype, copy=True) for p in resolved.trainable()}
        stepped = {n: params[n] for n in Recipe.of(config, resolved).stepped}
        for grads, lr in zip(grads_per_step, lrs):
            opt.step(stepped, {k: np.asarray(grads[k], dtype=dtype) for k in stepped}, lr)  # in place
        return params


__all__ = ["ReferenceAdapter"]
