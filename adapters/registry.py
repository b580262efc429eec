"""Which backends and weight converters exist, as lazily imported "module:attr" strings.

Nothing here imports torch or jax; `get_adapter` does, when asked for one. The backend protocol
is code: `effv2_adapters.conformance.protocol.Adapter` (required: build, forward,
forward_backward, export_tensors; optional capabilities: optimizer_steps, emit_source).

A framework is named in one of three ways:
* a built-in name (`ADAPTERS`: reference, torch, jax);
* an installed package's name, registered in the entry-point group `effv2.adapters`
  (`[project.entry-points."effv2.adapters"] mine = "my_pkg.adapter:MyAdapter"`);
* a "package.module:Class" string, imported from sys.path (nothing to install).

Importer signature: import_X(path, spec) -> dict[str, np.ndarray] (canonical tensors);
exporter signature: export_X(tensors, spec, path) -> None.
"""

from __future__ import annotations

from importlib import metadata

from effv2_spec.lazy import TargetError, load_target

#: the entry-point group through which installed packages register a backend by name
ENTRY_POINT_GROUP = "effv2.adapters"

ADAPTERS: dict[str, str] = {
    "reference": "effv2_adapters.oracle:ReferenceAdapter",
    "torch": "effv2_adapters.torch.adapter:TorchAdapter",
    "jax": "effv2_adapters.jax.adapter:JaxAdapter",
}

IMPORTERS: dict[str, str] = {
    "torchvision": "effv2_adapters.torch.peers:import_torchvision",
    "timm": "effv2_adapters.torch.peers:import_timm",
    "keras": "effv2_adapters.jax.keras_import:import_keras",
    "efficientnet_pytorch": "effv2_adapters.torch.peers:import_efficientnet_pytorch",
    "dli14": "effv2_adapters.torch.peers:import_dli14",
}

EXPORTERS: dict[str, str] = {
    "torchvision": "effv2_adapters.torch.peers:export_torchvision",
    "timm": "effv2_adapters.torch.peers:export_timm",
    "efficientnet_pytorch": "effv2_adapters.torch.peers:export_efficientnet_pytorch",
    "dli14": "effv2_adapters.torch.peers:export_dli14",
    "keras": "effv2_adapters.jax.keras_export:export_keras",
}


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def framework_names() -> list[str]:
    """Built-in backends, then those installed packages register (a built-in name wins)."""
    return list(ADAPTERS) + [n for n in _entry_points() if n not in ADAPTERS]


def adapter_target(name: str) -> str:
    """The "module:Class" behind a framework name; KeyError (one line) for an unknown name."""
    if ":" in name:
        return name
    if name in ADAPTERS:
        return ADAPTERS[name]
    plugins = _entry_points()
    if name in plugins:
        return plugins[name]
    raise KeyError(f"unknown framework {name!r}; available: {', '.join(framework_names())} "
                   "(or a 'package.module:Class' of your own)")


def get_adapter(name: str):
    """An adapter instance. ImportError when its module cannot be imported; KeyError for an unknown
    name; TargetError (a ValueError) when a "module:Class" names nothing."""
    factory = load_target(adapter_target(name))
    return factory() if isinstance(factory, type) else factory  # a class, or a ready instance


def get_importer(name: str):
    if name not in IMPORTERS:
        raise KeyError(f"unknown source {name!r}; available: {', '.join(IMPORTERS)}")
    return load_target(IMPORTERS[name])


def get_exporter(name: str):
    if name not in EXPORTERS:
        raise KeyError(f"unknown target {name!r}; available: {', '.join(EXPORTERS)}")
    return load_target(EXPORTERS[name])


__all__ = ["ADAPTERS", "IMPORTERS", "EXPORTERS", "ENTRY_POINT_GROUP", "TargetError", "framework_names",
           "adapter_target", "get_adapter", "get_importer", "get_exporter"]
