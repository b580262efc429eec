"""JAX backend (Flax NNX): build_model / emit_source, canonical weight exchange, Keras import, optax optimisers.

Imports jax lazily (attribute access), so `import effv2_adapters.jax` is cheap.
"""

from __future__ import annotations

from effv2_spec.lazy import lazy_exports

_EXPORTS = {
    "build_model": "build", "emit_source": "build", "config_from_resolved": "build",
    "forward": "modules", "forward_backward": "modules", "EfficientNet": "modules",
    "load_canonical_tensors": "weights", "load_safetensors": "weights", "save_safetensors": "weights",
    "state_to_canonical": "weights", "optimizer_steps": "optim", "make_optimizer": "optim",
    "JaxAdapter": "adapter", "import_keras": "keras_import", "export_keras": "keras_export",
    "JaxBackend": "train", "make_jax_backend": "train",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
