"""The documented third-party adapter with one planted error: BN eps 1e-5 where the spec says 1e-3."""

from functional_torch_adapter import FunctionalTorch

from effv2_spec.training import BatchNormTraining


class WrongEps(FunctionalTorch):
    name = "functional-torch-wrong-eps"

    def bn_eps(self, resolved) -> float:
        return 1e-5



class _IgnoresField:
    """The built-in torch adapter whose optimiser steps drop one recipe field (`dropped`: the field and the
    value it is reset to): `effv2 check` must fail naming that field."""

    dropped: dict = {}

    def __init__(self):
        from effv2_adapters.torch.adapter import TorchAdapter

        self.inner = TorchAdapter()

    def __getattr__(self, attr):
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def optimizer_steps(self, tensors, grads_per_step, config, lrs, resolved):
        return self.inner.optimizer_steps(tensors, grads_per_step, config.model_copy(update=self.dropped), lrs,
                                          resolved)


class IgnoresClipping(_IgnoresField):
    """What the torch and JAX adapters did before the recipe: no `gradient_clip_norm`."""

    name = "torch-ignores-clipping"
    dropped = {"gradient_clip_norm": None}


class IgnoresFrozenAffine(_IgnoresField):
    """Steps BN gamma / beta although `batch_norm.freeze_affine` keeps them fixed."""

    name = "torch-ignores-freeze-affine"
    dropped = {"batch_norm": BatchNormTraining()}  # batch statistics, gamma and beta trained


class IgnoresDecoupledDecay(_IgnoresField):
    """Steps AdamW without its decoupled `weight_decay` (torch.optim.Adam where AdamW is meant)."""

    name = "torch-ignores-decoupled-decay"

    def optimizer_steps(self, tensors, grads_per_step, config, lrs, resolved):
        plain = config.optimizer.model_copy(update={"weight_decay": 0.0})
        return self.inner.optimizer_steps(tensors, grads_per_step, config.model_copy(update={"optimizer": plain}),
                                          lrs, resolved)


class IgnoresField(_IgnoresField):
    """Steps the field of any recipe-field check (`check`, e.g. "rmsprop.eps") at its base recipe's value, whatever
    the config says (recipes.ignoring): a backend with that value hard-coded."""

    def __init__(self, check: str):
        super().__init__()
        self.check, self.name = check, f"torch-ignores-{check}"

    def optimizer_steps(self, tensors, grads_per_step, config, lrs, resolved):
        from effv2_adapters.conformance.recipes import ignoring

        return self.inner.optimizer_steps(tensors, grads_per_step, ignoring(config, self.check), lrs, resolved)
