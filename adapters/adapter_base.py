"""`PackagedAdapter`: the skeleton the built-in adapters share.

A backend lives in one package whose sibling modules hold its parts: `build` (build_model,
emit_source), `weights` (load_canonical_tensors), `optim` (optimizer_steps), `train` (the
trainer). The base class says whether the backend can run here (the modules it needs import),
builds a model and delegates the optional capabilities to those modules, imported when first
used; a subclass names its package and writes what differs: forward, forward_backward, export,
its trainer's options. Nothing here imports a framework.
"""

from __future__ import annotations

import importlib
from typing import Mapping, Sequence

import numpy as np


class PackagedAdapter:
    name: str
    #: the backend's package (its parts are `<package>.build`, `.weights`, `.optim`, `.train`)
    package: str
    #: modules that must import for the backend to run, how to name them to a user, and the pip extra
    requires: tuple[str, ...] = ()
    requirement: str = ""
    extra: str = ""

    def available(self) -> str | None:
        try:
            for module in self.requires:
                importlib.import_module(module)
        except ImportError as exc:  # pragma: no cover - depends on the environment
            return f"{self.requirement} is not installed ({exc}); pip install 'effv2[{self.extra}]'"
        return None

    def part(self, module: str):
        """`<package>.<module>`, imported now."""
        return importlib.import_module(f"{self.package}.{module}")

    def build(self, resolved, dtype, tensors: Mapping[str, np.ndarray] | None = None):
        model = self.part("build").build_model(resolved, dtype, init=tensors is None)
        if tensors is not None:
            self.part("weights").load_canonical_tensors(model, tensors, resolved)
        return model

    def optimizer_steps(self, tensors, grads_per_step: Sequence[Mapping[str, np.ndarray]], config, lrs,
                        resolved) -> dict[str, np.ndarray]:
        return self.part("optim").optimizer_steps(tensors, grads_per_step, config, lrs, resolved)

    def emit_source(self, resolved, module_name: str = "model") -> str:
        return self.part("build").emit_source(resolved, module_name)


__all__ = ["PackagedAdapter"]
