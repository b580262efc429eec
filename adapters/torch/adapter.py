"""`TorchAdapter`: the PyTorch backend behind the adapter protocol (effv2_adapters.conformance.protocol)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..adapter_base import PackagedAdapter


class TorchAdapter(PackagedAdapter):
    """Stateless factory: build / run / differentiate / export / optimise / train PyTorch models."""

    name = "torch"
    package = "effv2_adapters.torch"
    requires, requirement, extra = ("torch",), "PyTorch", "torch"

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
        return self.part("weights").state_dict_to_canonical(model)

    def trainer(self, *, dtype: str, device: str | None = None, precision: str = "float32",
                channels_last: bool = False, compile: bool = False, timeout_s: float = 600.0, **_other):
        """(make_backend, processes): one process, or this rank of a torchrun group."""
        return self.part("train").make_torch_backend(dtype=dtype, device=device, precision=precision,
                                                     channels_last=channels_last, compile=compile, timeout_s=timeout_s)


def get_adapter() -> TorchAdapter:
    return TorchAdapter()


__all__ = ["TorchAdapter", "get_adapter"]
