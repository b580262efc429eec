"""PyTorch backend: build_model / emit_source, canonical weight exchange, peer importers, optimisers.

Imports torch lazily (attribute access), so `import effv2_adapters.torch` is cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_model": "build", "emit_source": "build", "config_from_resolved": "build",
    "load_canonical_tensors": "weights", "load_safetensors": "weights", "save_safetensors": "weights",
    "state_dict_to_canonical": "weights", "optimizer_steps": "optim", "make_optimizer": "optim",
    "TFRMSProp": "optim", "TorchAdapter": "adapter",
    "import_torchvision": "peers", "import_timm": "peers", "export_torchvision": "peers", "export_timm": "peers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
