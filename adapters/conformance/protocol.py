"""The backend protocol every adapter implements, the reference oracle included.

An adapter is a stateless factory: it builds a runtime model from the resolved tables and the
canonical tensors, runs it, differentiates it and exports its tensors back under canonical
names. Four methods are required; three are optional capabilities the harness and the CLI detect
(an optimiser, emitted source, training), and a check that needs a missing capability is reported
as "not run", never as passed.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

#: optional method -> the capability it provides (and the checks that need it)
CAPABILITIES: dict[str, str] = {"optimizer_steps": "optimizer", "emit_source": "source", "trainer": "training"}


@runtime_checkable
class Adapter(Protocol):
    """What the conformance harness and the CLI need from a backend (canonical names and layouts:
    inputs NCHW, conv kernels OIHW, depthwise C x 1 x k x k, dense (out, in))."""

    name: str

    def build(self, resolved: Any, dtype: str, tensors: Mapping[str, np.ndarray] | None = None) -> Any:
        """A runtime model of `resolved` in `dtype` holding the canonical `tensors` (params and buffers)."""

    def forward(self, model: Any, x: np.ndarray, *, training: bool,
                masks: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits for NCHW `x`. training=True: batch statistics (the model's BN running statistics
        are updated), dropout / drop path with the given keep masks (canonical mask names)."""

    def forward_backward(self, model: Any, x: np.ndarray, dlogits: np.ndarray, *,
                         masks: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Training-mode forward, then the gradient of sum(logits * dlogits) for every trainable tensor."""

    def export_tensors(self, model: Any) -> dict[str, np.ndarray]:
        """Every parameter and buffer under its canonical name and layout."""


@runtime_checkable
class OptimizerCapable(Protocol):
    def optimizer_steps(self, tensors: Mapping[str, np.ndarray], grads_per_step: Sequence[Mapping[str, np.ndarray]],
                        config: Any, lrs: Sequence[float], resolved: Any) -> dict[str, np.ndarray]:
        """len(lrs) steps of the backend's optimiser configured from the TrainingConfig `config`,
        from fresh optimiser state; the updated trainable tensors."""


@runtime_checkable
class SourceCapable(Protocol):
    def emit_source(self, resolved: Any, module_name: str = "model") -> str:
        """One standalone source file that builds the model (importable as `module_name`)."""


@runtime_checkable
class TrainingCapable(Protocol):
    def trainer(self, *, dtype: str, **options: Any) -> tuple[Any, int]:
        """(make_backend, processes) for `effv2 train --framework NAME` and `check --train-steps`:
        `make_backend(plan, tensors)` returns the `effv2_train.trainloop.TrainingBackend` of this
        process (the shared loop does the rest); `processes` is the run's process count. `options`
        are the command's (device, precision, timeout_s, and the framework's own: channels_last,
        compile, coordinator, ...); an adapter takes what it knows. A run that cannot start as asked
        raises ValueError with one line for the user."""


def missing_methods(adapter: Any) -> list[str]:
    """The required methods (and `name`) `adapter` lacks; empty when it satisfies `Adapter`."""
    needed = ["name", "build", "forward", "forward_backward", "export_tensors"]
    return [m for m in needed if not (hasattr(adapter, m) and (m == "name" or callable(getattr(adapter, m))))]


def capabilities(adapter: Any) -> frozenset[str]:
    """The optional capabilities `adapter` provides ('optimizer', 'source', 'training')."""
    return frozenset(cap for method, cap in CAPABILITIES.items() if callable(getattr(adapter, method, None)))


def availability(adapter: Any) -> str | None:
    """None when the backend can run here, else its reason (an adapter without `available()` is assumed able)."""
    check = getattr(adapter, "available", None)
    return check() if callable(check) else None


__all__ = ["Adapter", "OptimizerCapable", "SourceCapable", "TrainingCapable", "CAPABILITIES", "missing_methods",
           "capabilities", "availability"]
