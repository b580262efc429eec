"""JAX backend (Flax NNX): build_model / emit_source, canonical weight exchange, Keras import, optax optimisers.

Imports jax lazily (attribute access), so `import effv2_adapters.jax` is cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_model": "build", "emit_source": "build", "config_from_resolved": "build",
    "forward": "modules", "forward_backward": "modules", "EfficientNet": "modules",
    "load_canonical_tensors": "weights", "load_safetensors": "weights", "save_safetensors": "weights",
    "state_to_canonical": "weights", "optimizer_steps": "optim", "make_optimizer": "optim",
    "JaxAdapter": "adapter", "import_keras": "keras_import",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
