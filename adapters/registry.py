"""Which backends and weight importers exist, as lazily imported "module:attr" strings.

Nothing here imports torch or jax; `get_adapter` does, when asked for one.

Adapter protocol (one class per framework, instances are stateless factories):

    name: str
    available() -> str | None
        None when the framework imports, else a human-readable reason.
    build(resolved, dtype, tensors) -> model
        A runtime model with the canonical `tensors` (params and buffers) loaded.
    forward(model, x, *, training, masks=None) -> np.ndarray
        Logits for NCHW `x`; training=True uses batch statistics, updates the BN running
        statistics held by `model`, and applies dropout / drop path with the given masks.
    forward_backward(model, x, dlogits, *, masks=None) -> (logits, grads)
        Training-mode forward, then gradients of sum(logits * dlogits) for every trainable
        canonical parameter (dict name -> np.ndarray). Updates BN running statistics.
    export_tensors(model) -> dict[str, np.ndarray]
        Canonical names and layouts, params and buffers.
    optimizer_steps(tensors, grads_per_step, config, lrs, resolved) -> dict[str, np.ndarray]
        Apply len(lrs) steps of the framework's own optimiser, configured from the
        TrainingConfig `config` (weight decay by role included), starting from fresh
        optimiser state; returns the updated trainable tensors.
    emit_source(resolved) -> str
        One standalone source file building the model.

Importer signature: import_X(path, spec) -> dict[str, np.ndarray] (canonical tensors);
exporter signature: export_X(tensors, spec, path) -> None.
"""

from __future__ import annotations

import importlib

ADAPTERS: dict[str, str] = {
    "torch": "effv2_adapters.torch.adapter:TorchAdapter",
    "jax": "effv2_adapters.jax.adapter:JaxAdapter",
}

IMPORTERS: dict[str, str] = {
    "torchvision": "effv2_adapters.torch.peers:import_torchvision",
    "timm": "effv2_adapters.torch.peers:import_timm",
    "keras": "effv2_adapters.jax.keras_import:import_keras",
}

EXPORTERS: dict[str, str] = {
    "torchvision": "effv2_adapters.torch.peers:export_torchvision",
    "timm": "effv2_adapters.torch.peers:export_timm",
}


def _load(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def get_adapter(name: str):
    if name not in ADAPTERS:
        raise KeyError(f"unknown framework {name!r}; available: {', '.join(ADAPTERS)}")
    return _load(ADAPTERS[name])()


def get_importer(name: str):
    if name not in IMPORTERS:
        raise KeyError(f"unknown source {name!r}; available: {', '.join(IMPORTERS)}")
    return _load(IMPORTERS[name])


def get_exporter(name: str):
    if name not in EXPORTERS:
        raise KeyError(f"unknown target {name!r}; available: {', '.join(EXPORTERS)}")
    return _load(EXPORTERS[name])
