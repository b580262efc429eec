"""The documented third-party adapter with one planted error: BN eps 1e-5 where the spec says 1e-3."""

from functional_torch_adapter import FunctionalTorch


class WrongEps(FunctionalTorch):
    name = "functional-torch-wrong-eps"

    def bn_eps(self, resolved) -> float:
        return 1e-5
