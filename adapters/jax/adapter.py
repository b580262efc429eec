"""`JaxAdapter`: the JAX / Flax NNX backend behind the adapter protocol (effv2_adapters.conformance.protocol)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..adapter_base import PackagedAdapter


class JaxAdapter(PackagedAdapter):
    """Stateless factory: build / run / differentiate / export / optimise / train Flax NNX models (jit-compiled)."""

    name = "jax"
    package = "effv2_adapters.jax"
    requires, requirement, extra = ("flax.nnx", "jax", "optax"), "JAX, Flax or optax", "jax"

    def forward(self, model, x, *, training: bool, masks: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        return np.asarray(self.part("modules").forward(model, x, training, masks))

    def forward_backward(self, model, x, dlogits, *, masks=None):
        logits, grads = self.part("modules").forward_backward(model, x, dlogits, masks)
        return np.asarray(logits), self.part("canonical").state_to_numpy(grads)

    def export_tensors(self, model) -> dict[str, np.ndarray]:
        return self.part("weights").state_to_canonical(model)

    def trainer(self, *, dtype: str, device: str | None = None, precision: str = "float32", timeout_s: float = 600.0,
                coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                **_other):
        """(make_backend, processes): this host's devices, or this process of a jax.distributed group."""
        return self.part("train").make_jax_backend(dtype=dtype, device=device, precision=precision,
                                                   timeout_s=timeout_s, coordinator=coordinator,
                                                   num_processes=num_processes, process_id=process_id)


def get_adapter() -> JaxAdapter:
    return JaxAdapter()


__all__ = ["JaxAdapter", "get_adapter"]
