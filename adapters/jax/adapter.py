"""`JaxAdapter`: the JAX / Flax NNX backend behind the adapter protocol (effv2_adapters.conformance.protocol)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


class JaxAdapter:
    """Stateless factory: build / run / differentiate / export / optimise Flax NNX models (jit-compiled)."""

    name = "jax"

    def available(self) -> str | None:
        try:
            import flax.nnx  # noqa: F401
            import jax  # noqa: F401
            import optax  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            return f"JAX, Flax or optax is not installed ({exc}); pip install 'effv2[jax]'"
        return None

    # ---- model --------------------------------------------------------------------------------
    def build(self, resolved, dtype, tensors: Mapping[str, np.ndarray] | None = None):
        from .build import build_model
        from .weights import load_canonical_tensors

        model = build_model(resolved, dtype, init=tensors is None)
        if tensors is not None:
            load_canonical_tensors(model, tensors, resolved)
        return model

    def forward(self, model, x, *, training: bool, masks: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        from .modules import forward

        return np.asarray(forward(model, x, training, masks))

    def forward_backward(self, model, x, dlogits, *, masks=None):
        from .modules import forward_backward, state_to_numpy

        logits, grads = forward_backward(model, x, dlogits, masks)
        return np.asarray(logits), state_to_numpy(grads)

    def export_tensors(self, model) -> dict[str, np.ndarray]:
        from .weights import state_to_canonical

        return state_to_canonical(model)

    # ---- training -----------------------------------------------------------------------------
    def optimizer_steps(self, tensors, grads_per_step: Sequence[Mapping[str, np.ndarray]], config, lrs,
                        resolved) -> dict[str, np.ndarray]:
        from .optim import optimizer_steps

        return optimizer_steps(tensors, grads_per_step, config, lrs, resolved)

    # ---- code generation ----------------------------------------------------------------------
    def emit_source(self, resolved, module_name: str = "model") -> str:
        from .build import emit_source

        return emit_source(resolved, module_name)


def get_adapter() -> JaxAdapter:
    return JaxAdapter()


__all__ = ["JaxAdapter", "get_adapter"]
