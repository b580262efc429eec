"""PyTorch backend: build_model / emit_source, canonical weight exchange, peer importers, optimisers.

Imports torch lazily (attribute access), so `import effv2_adapters.torch` is cheap.
"""

from __future__ import annotations

from effv2_spec.lazy import lazy_exports

_EXPORTS = {
    "build_model": "build", "emit_source": "build", "config_from_resolved": "build",
    "load_canonical_tensors": "weights", "load_safetensors": "weights", "save_safetensors": "weights",
    "state_dict_to_canonical": "weights", "optimizer_steps": "optim", "make_optimizer": "optim",
    "TFRMSProp": "optim", "TorchAdapter": "adapter",
    "import_torchvision": "peers", "import_timm": "peers", "export_torchvision": "peers", "export_timm": "peers",
    "import_efficientnet_pytorch": "peers", "export_efficientnet_pytorch": "peers",
    "import_dli14": "peers", "export_dli14": "peers",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
