"""`TorchAdapter`: the PyTorch backend behind the adapter protocol (effv2_adapters.conformance.protocol)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


class TorchAdapter:
    """Stateless factory: build / run / differentiate / export / optimise PyTorch models."""

    name = "torch"

    def available(self) -> str | None:
        try:
            import torch  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            return f"PyTorch is not installed ({exc}); pip install 'effv2[torch]'"
        return None

    # ---- model --------------------------------------------------------------------------------
    def build(self, resolved, dtype, tensors: Mapping[str, np.ndarray] | None = None):
        from .build import build_model
        from .weights import load_canonical_tensors

        model = build_model(resolved, dtype, init=tensors is None)
        if tensors is not None:
            load_canonical_tensors(model, tensors, resolved)
        return model

    @staticmethod
    def _tensor(model, x):
        import torch

        p = next(model.parameters())
        return torch.as_tensor(np.asarray(x)).to(dtype=p.dtype, device=p.device)

    def _masks(self, model, masks):
        if not masks:
            return None
        return {k: self._tensor(model, v) for k, v in masks.items()}

    def forward(self, model, x, *, training: bool, masks: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        import torch

        model.train(training)
        with torch.no_grad():
            out = model(self._tensor(model, x), self._masks(model, masks))
        return out.detach().cpu().numpy()

    def forward_backward(self, model, x, dlogits, *, masks=None):
        import torch

        model.train(True)
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            logits = model(self._tensor(model, x), self._masks(model, masks))
            (logits * self._tensor(model, dlogits)).sum().backward()
        grads = {}
        for name, p in model.named_parameters():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            grads[name] = g.detach().cpu().numpy().copy()
        return logits.detach().cpu().numpy(), grads

    def export_tensors(self, model) -> dict[str, np.ndarray]:
        from .weights import state_dict_to_canonical

        return state_dict_to_canonical(model)

    # ---- training -----------------------------------------------------------------------------
    def optimizer_steps(self, tensors, grads_per_step: Sequence[Mapping[str, np.ndarray]], config, lrs,
                        resolved) -> dict[str, np.ndarray]:
        from .optim import optimizer_steps

        return optimizer_steps(tensors, grads_per_step, config, lrs, resolved)

    # ---- code generation ----------------------------------------------------------------------
    def emit_source(self, resolved, module_name: str = "model") -> str:
        from .build import emit_source

        return emit_source(resolved, module_name)


def get_adapter() -> TorchAdapter:
    return TorchAdapter()


__all__ = ["TorchAdapter", "get_adapter"]
