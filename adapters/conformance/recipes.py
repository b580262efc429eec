"""The recipes of the update checks, derived from the training schema: one base recipe per optimiser of
`effv2_spec.training.OPTIMIZERS`, and one variant per field (a check named `<optimiser type>.<field>`, or
by the recipe field's dotted path), so that a backend that ignores any field of the spec fails the check
that names it, and a field added to the schema gets its check without an edit here.

The variant's value comes from a rule on the field's annotation, applied to the base recipe's value:
a bool is flipped; a Literal takes its first other member; a float takes half the base value, or, where
half is not different or not allowed, the midpoint between the base value and the upper bound (2 v + 1
without one). `OVERRIDES` gives the value where the rule's would not make the check discriminating; a
field of any other type has no rule, and deriving the checks raises an error naming it (a test runs it).
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import annotated_types as at

from effv2_spec.training import OPTIMIZERS, BatchNormTraining, TrainingConfig, WeightDecay


def optimizer_type(cls: type) -> str:
    """'sgd' for SGD: the discriminator value of an optimiser model."""
    return get_args(cls.model_fields["type"].annotation)[0]


#: the optimisers by type, in the schema's order: each has a base check named by its type
OPTIMIZER_MODELS = {optimizer_type(cls): cls for cls in OPTIMIZERS}
OPTIMIZER_TYPES = tuple(OPTIMIZER_MODELS)

#: each optimiser's base recipe where it is not the schema's defaults. SGD: Nesterov (the variant, plain
#: momentum, is the default). RMSProp: the TF conventions with eps 0.1, not 1e-3: eps sits inside sqrt(ms + eps)
#: with ms ~ 1 (the accumulator starts at 1), where 1e-3 moves the update by 5e-4 only, under the float32
#: tolerance, so the eps and eps_placement checks could not fail in float32; at 0.1 they move it by 2-5 %.
#: AdamW: eps 1e-6, not 1e-8: where a gradient and the L2 term nearly cancel, float32 rounds their sum by ~1e-10,
#: which Adam's g / (|g| + eps) magnifies by 1 / eps (to ~6e-3 of the update at 1e-8, over the float32
#: tolerance, for any correct backend; ~6e-5 at 1e-6); and no decoupled decay beside the coupled L2.
BASES: dict[str, dict[str, Any]] = {"sgd": {"nesterov": True}, "rmsprop": {"eps": 0.1},
                                    "adamw": {"eps": 1e-6, "weight_decay": 0.0}}

#: the coupled L2 of every update check: strong enough that a backend decaying the wrong tensors is seen
BASE_WEIGHT_DECAY = WeightDecay(rate=1e-3)

#: a field check's value where the rule's would not discriminate well. AdamW's eps: half of 1e-6 moves (by more
#: than 1e-2) only the 17 of nano's 56 updates whose gradients come near 1e-6, the worst a BN beta whose exact
#: gradient is 0 (rounding noise), so the check would rest on the noisiest tensors; 1e-3, above many of the
#: check's gradients, moves 55 of them.
OVERRIDES: dict[str, Any] = {"adamw.eps": 1e-3}

#: the checks of the recipe fields outside the optimiser, each a variant of SGD's base recipe
RECIPE_FIELD_CHECKS = ("gradient_clip_norm", "batch_norm.freeze_affine", "weight_decay.applies_to",
                       "weight_decay.rate")


def optimizer_field_checks(models: dict[str, type]) -> tuple[str, ...]:
    """`<type>.<field>` for every field but `type` of every optimiser model, in the schema's order."""
    return tuple(f"{kind}.{name}" for kind, cls in models.items() for name in cls.model_fields if name != "type")


OPTIMIZER_FIELD_CHECKS = optimizer_field_checks(OPTIMIZER_MODELS)
FIELD_CHECKS = RECIPE_FIELD_CHECKS + OPTIMIZER_FIELD_CHECKS


def base_of(check: str) -> str:
    """The base check a field check changes one field of: its optimiser's type, or 'sgd'."""
    head = check.partition(".")[0]
    return head if head in OPTIMIZER_MODELS else "sgd"


def field_path(check: str) -> tuple[str, ...]:
    """Where the field of a check lives in a TrainingConfig: 'sgd.momentum' -> ('optimizer', 'momentum')."""
    head, _, rest = check.partition(".")
    return ("optimizer", rest) if head in OPTIMIZER_MODELS else tuple(check.split("."))


def get_field(config: TrainingConfig, path: tuple[str, ...]) -> Any:
    node = config
    for name in path:
        node = getattr(node, name)
    return node


def with_field(config: Any, path: tuple[str, ...], value: Any) -> Any:
    """`config` with the (nested) field at `path` replaced, validated again."""
    name, *rest = path
    new = with_field(getattr(config, name), tuple(rest), value) if rest else value
    return type(config).model_validate({**dict(config), name: new})


def base_config(kind: str) -> TrainingConfig:
    """The base recipe of optimiser `kind`: BASES over the schema's defaults, coupled L2 BASE_WEIGHT_DECAY."""
    optimizer = OPTIMIZER_MODELS[kind](type=kind, **BASES.get(kind, {}))
    return TrainingConfig(optimizer=optimizer, weight_decay=BASE_WEIGHT_DECAY)


def rule_value(check: str, info: Any, value: Any) -> Any:
    """The value the rule gives the field `check` (pydantic FieldInfo `info`) whose base value is `value`."""
    annotation = info.annotation
    if annotation is bool:
        return not value
    if get_origin(annotation) is Literal:
        others = [m for m in get_args(annotation) if m != value]
        if others:
            return others[0]
    elif annotation is float:
        upper = next((float(getattr(m, a)) for m in info.metadata for a in ("lt", "le") if hasattr(m, a)), None)
        for candidate in (value / 2, (value + upper) / 2 if upper is not None else 2 * value + 1):
            if candidate != value and _allowed(candidate, info.metadata):
                return candidate
    kind = getattr(annotation, "__name__", repr(annotation))
    raise TypeError(f"{check}: no rule gives the check a value for a field of type {kind}; give one in "
                    "effv2_adapters.conformance.recipes.OVERRIDES")


def _allowed(value: float, metadata: list) -> bool:
    tests = {at.Ge: lambda m: value >= m.ge, at.Gt: lambda m: value > m.gt, at.Le: lambda m: value <= m.le,
             at.Lt: lambda m: value < m.lt}
    return all(tests[type(m)](m) for m in metadata if type(m) in tests)


def variant_value(check: str) -> Any:
    """The value the field of an optimiser field check, or of weight_decay.rate, takes in its variant."""
    if check in OVERRIDES:
        return OVERRIDES[check]
    path = field_path(check)
    owner = OPTIMIZER_MODELS[check.partition(".")[0]] if path[0] == "optimizer" else WeightDecay
    return rule_value(check, owner.model_fields[path[-1]], get_field(base_config(base_of(check)), path))


def training_configs(clip_norm: float = 1.0) -> dict[str, TrainingConfig]:
    """Every update check's recipe by check name: each optimiser's base recipe (`base_config`), then one variant
    per field check, its base with that one field changed. `clip_norm`: the gradient_clip_norm check's (small
    enough to clip the check's gradients)."""
    configs = {kind: base_config(kind) for kind in OPTIMIZER_TYPES}
    sgd = configs["sgd"]
    configs["gradient_clip_norm"] = with_field(sgd, ("gradient_clip_norm",), clip_norm)
    configs["batch_norm.freeze_affine"] = sgd.model_copy(update={"batch_norm": BatchNormTraining(
        mode="frozen", freeze_affine=True)})  # freeze_affine acts with frozen BN only
    configs["weight_decay.applies_to"] = with_field(sgd, ("weight_decay", "applies_to"), (
        "conv_kernel", "bn_gamma", "bn_beta", "dense_bias"))  # biases and BN affine decay, other kernels do not
    for check in ("weight_decay.rate",) + OPTIMIZER_FIELD_CHECKS:
        configs[check] = with_field(configs[base_of(check)], field_path(check), variant_value(check))
    return configs


def ignoring(config: TrainingConfig, check: str) -> TrainingConfig:
    """`config` with the field of `check` back at its base recipe's value: what a backend that ignores the field
    (and hard-codes the base's value) computes. Unchanged when the field is not in `config` (another optimiser)."""
    path, base = field_path(check), base_config(base_of(check))
    if path[0] == "optimizer" and config.optimizer.type != base.optimizer.type:
        return config
    return with_field(config, path, get_field(base, path))


__all__ = ["OPTIMIZER_TYPES", "OPTIMIZER_MODELS", "BASES", "BASE_WEIGHT_DECAY", "OVERRIDES", "RECIPE_FIELD_CHECKS",
           "OPTIMIZER_FIELD_CHECKS", "FIELD_CHECKS", "optimizer_field_checks", "base_of", "field_path", "get_field",
           "with_field", "base_config", "rule_value", "variant_value", "training_configs", "ignoring",
           "optimizer_type"]
