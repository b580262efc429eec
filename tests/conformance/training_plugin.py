"""A third-party adapter that can train: outside the package, found as "module:Class", delegating every
capability to the built-in PyTorch adapter under its own name (what a fork of a backend looks like)."""

from effv2_adapters.torch.adapter import TorchAdapter


class RenamedTorch(TorchAdapter):
    name = "renamed-torch"
