"""One way to name code without importing it: "package.module:attr" strings, loaded on first use.

The CLI's subcommands, the adapter registry and the framework packages' attributes all go
through `load_target`, so `effv2 validate` never imports numba, torch or jax.
"""

from __future__ import annotations

import importlib
from typing import Any


class TargetError(ValueError):
    """A "module:attr" string that is malformed or names nothing (after the module imported)."""


def split_target(target: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr or ":" in attr:
        raise TargetError(f"{target!r}: expected 'package.module:Name'")
    return module, attr


def load_target(target: str) -> Any:
    """The object `target` names. ImportError propagates (the caller knows what is optional);
    a module without the attribute is a TargetError."""
    module, attr = split_target(target)
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TargetError(f"{target!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def lazy_exports(package: str, exports: dict[str, str]):
    """A module `__getattr__` that imports `package.<exports[name]>` when `name` is first used."""

    def __getattr__(name: str):
        if name in exports:
            return load_target(f"{package}.{exports[name]}:{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__all__ = ["TargetError", "split_target", "load_target", "lazy_exports"]
