"""The framework-neutral half of every adapter: the CONFIG table and the emitted-source scaffolding.

Each backend's `modules.py` runs a plain-data CONFIG table (one row per unit, every number copied
from the resolved model, never recomputed), so the runtime model and the standalone file are the
same code fed the same table. What differs between backends (their modules, their file template)
stays in the backend; the table and the way it is rendered live here, once.
"""

from __future__ import annotations

import ast
import inspect
import pprint
from types import ModuleType
from typing import Any

from effv2_spec.resolve import ConvBN, ResolvedModel, SqueezeExcite, as_resolved

#: the modules build these tensors as constants; only kernel init rules travel in the table
CONSTANT_INITS = {"bn_gamma": "ones", "bn_beta": "zeros", "bn_running_mean": "zeros", "bn_running_var": "ones",
                  "se_bias": "zeros", "dense_bias": "zeros"}


def _check_constant_inits(resolved: ResolvedModel, backend: str) -> None:
    for p in resolved.params:
        want = CONSTANT_INITS.get(p.role)
        if want is not None and p.init.kind != want:  # fail loudly if resolve ever grows another rule
            raise NotImplementedError(f"{p.name}: init {p.init.kind!r} not supported by the {backend} adapter "
                                      f"(expected {want!r})")


def _rule(resolved: ResolvedModel, name: str) -> list:
    rule = resolved.param(name).init
    return [rule.kind, float(rule.scale)]


def _row(resolved: ResolvedModel, unit) -> dict:
    if isinstance(unit, ConvBN):
        return {"name": unit.name, "slot": unit.slot, "kind": "conv_bn", "in": unit.in_channels, "out": unit.out_channels,
                "kernel": unit.kernel, "stride": unit.stride, "groups": unit.groups, "act": unit.activation,
                "init": _rule(resolved, f"{unit.name}.conv.weight")}
    if isinstance(unit, SqueezeExcite):
        return {"name": unit.name, "slot": unit.slot, "kind": "se", "channels": unit.channels, "squeeze": unit.squeeze_channels,
                "act": unit.activation, "gate": unit.gate, "init": [_rule(resolved, f"{unit.name}.reduce.weight"), _rule(resolved, f"{unit.name}.expand.weight")]}
    raise TypeError(f"unknown unit {unit!r}")


def config_from_resolved(resolved: ResolvedModel, backend: str = "this") -> dict:
    """The plain-data CONFIG table of `resolved` (JSON-compatible)."""
    _check_constant_inits(resolved, backend)
    cls = resolved.classifier
    return {
        "name": resolved.spec.name,
        "image_size": list(resolved.image_size),
        "padding": resolved.padding,
        "activation": resolved.activation,
        "batch_norm": {"eps": resolved.bn_eps, "momentum": resolved.bn_momentum, "running_var": resolved.bn_running_var},
        "normalization": {"in_model": resolved.normalize_in_model, "mean": list(resolved.input_mean),
                          "std": list(resolved.input_std)},
        "stem": _row(resolved, resolved.stem),
        "blocks": [{"index": b.index, "stage": b.stage, "type": b.type, "residual": b.residual,
                    "drop_path_rate": b.drop_path_rate, "layers": [_row(resolved, u) for u in b.layers]}
                   for b in resolved.blocks],
        "head": _row(resolved, resolved.head),
        "classifier": {"name": cls.name, "in": cls.in_features, "out": cls.out_features, "dropout": cls.dropout,
                       "init": _rule(resolved, f"{cls.name}.weight")},
    }


# ---- source emission ------------------------------------------------------------------------
def module_body(module: ModuleType) -> str:
    """A module's source without its docstring (the generated file gets its own)."""
    src = inspect.getsource(module)
    first = ast.parse(src).body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return "".join(src.splitlines(keepends=True)[first.end_lineno:]).lstrip("\n")
    return src


def _fmt(value: Any) -> str:
    return pprint.pformat(value, width=200, sort_dicts=False, compact=True)


def config_source(cfg: dict) -> str:
    """CONFIG as readable Python: the stage table with one line per unit."""
    out = ["CONFIG = {"]
    for key, value in cfg.items():
        if key != "blocks":
            out.append(f"    {key!r}: {_fmt(value)},")
            continue
        out.append("    'blocks': [")
        for b in value:
            head = {k: v for k, v in b.items() if k != "layers"}
            out.append("        {" + _fmt(head)[1:-1] + ", 'layers': [")
            out.extend(f"            {_fmt(layer)}," for layer in b["layers"])
            out.append("        ]},")
        out.append("    ],")
    out.append("}")
    return "\n".join(out)


def wrapped_string(text: str, width: int = 96) -> str:
    """A long string as adjacent literals, one per line (any content is safe: each chunk is repr'd)."""
    return "\n".join(f"    {text[i:i + width]!r}" for i in range(0, len(text), width))


def render_source(template: str, spec_or_resolved: Any, modules: ModuleType, backend: str,
                  module_name: str = "model") -> str:
    """Fill a backend's file `template` with its `modules` source, the CONFIG table and the spec JSON.

    Template fields: name, module, padding, activation, eps, momentum, running_var, in_model, size,
    body, config, spec_json. The result is compiled before it is returned: a file that does not
    parse is never handed out.
    """
    resolved = as_resolved(spec_or_resolved)
    cfg = config_from_resolved(resolved, backend)
    bn = cfg["batch_norm"]
    safe_name = " ".join(cfg["name"].split()).replace("\\", "/").replace('"', "'")  # docstring-safe
    src = template.format(
        name=safe_name, module=module_name, padding=cfg["padding"], activation=cfg["activation"], eps=bn["eps"],
        momentum=bn["momentum"], running_var=bn["running_var"], in_model=cfg["normalization"]["in_model"],
        size="x".join(map(str, cfg["image_size"])), body=module_body(modules).rstrip() + "\n",
        config=config_source(cfg), spec_json=wrapped_string(resolved.spec.model_dump_json()),
    )
    compile(src, f"<effv2 generated {cfg['name']}>", "exec")
    return src
