"""Build a PyTorch EfficientNet from a spec, and emit it as one standalone source file.

`config_from_resolved` turns a `ResolvedModel` into the plain CONFIG table that the modules
in `effv2_adapters.torch.modules` consume (every number copied from the resolved tables,
never recomputed). `build_model` builds from it; `emit_source` writes the same modules plus
the table and a `build_model()` function into a file that needs only torch.
"""

from __future__ import annotations

import ast
import inspect
import pprint
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.resolve import ConvBN, ResolvedModel, SqueezeExcite, resolve

from . import modules
from .modules import EfficientNet, build_from_config

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def as_resolved(spec_or_resolved: Any) -> ResolvedModel:
    """A ResolvedModel from a ResolvedModel, an ArchitectureSpec, or a preset name / JSON path."""
    if isinstance(spec_or_resolved, ResolvedModel):
        return spec_or_resolved
    if isinstance(spec_or_resolved, ArchitectureSpec):
        return resolve(spec_or_resolved)
    if isinstance(spec_or_resolved, (str, Path)):
        from effv2_spec.documents import load_architecture

        return resolve(load_architecture(spec_or_resolved))
    raise TypeError(f"expected an ArchitectureSpec, ResolvedModel, preset name or path, got {type(spec_or_resolved).__name__}")


def as_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        name = np.dtype(dtype).name  # numpy dtypes, numpy scalar types, strings
    except TypeError:
        name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _init(resolved: ResolvedModel, name: str) -> list:
    rule = resolved.param(name).init
    return [rule.kind, float(rule.scale)]


def _expect_init(resolved: ResolvedModel, name: str, kind: str) -> None:
    rule = resolved.param(name).init
    if rule.kind != kind:  # the modules assume BN 1/0 and zero biases; fail loudly if resolve changes
        raise NotImplementedError(f"{name}: init {rule.kind!r} not supported by the torch adapter (expected {kind!r})")


def _unit_row(resolved: ResolvedModel, unit) -> dict:
    if isinstance(unit, ConvBN):
        for suffix, kind in (("weight", "ones"), ("bias", "zeros"), ("running_mean", "zeros"), ("running_var", "ones")):
            _expect_init(resolved, f"{unit.name}.bn.{suffix}", kind)
        return {"name": unit.name, "kind": "conv_bn", "in": unit.in_channels, "out": unit.out_channels,
                "kernel": unit.kernel, "stride": unit.stride, "groups": unit.groups, "act": unit.activation,
                "init": _init(resolved, f"{unit.name}.conv.weight")}
    if isinstance(unit, SqueezeExcite):
        _expect_init(resolved, f"{unit.name}.reduce.bias", "zeros")
        _expect_init(resolved, f"{unit.name}.expand.bias", "zeros")
        return {"name": unit.name, "kind": "se", "channels": unit.channels, "squeeze": unit.squeeze_channels,
                "init": [_init(resolved, f"{unit.name}.reduce.weight"), _init(resolved, f"{unit.name}.expand.weight")]}
    raise TypeError(f"unknown unit {unit!r}")


def config_from_resolved(resolved: ResolvedModel) -> dict:
    """The plain-data CONFIG table of `resolved` (JSON-compatible apart from tuples)."""
    spec = resolved.spec
    norm = spec.input.normalization
    cls = resolved.classifier
    _expect_init(resolved, f"{cls.name}.bias", "zeros")
    return {
        "name": spec.name,
        "image_size": list(resolved.image_size),
        "padding": resolved.padding,
        "activation": resolved.activation,
        "batch_norm": {"eps": resolved.bn_eps, "momentum": resolved.bn_momentum, "running_var": resolved.bn_running_var},
        "normalization": {"in_model": resolved.normalize_in_model, "mean": list(norm.mean), "std": list(norm.std)},
        "stem": _unit_row(resolved, resolved.stem),
        "blocks": [
            {"index": b.index, "stage": b.stage, "type": b.type, "residual": b.residual,
             "drop_path_rate": b.drop_path_rate, "layers": [_unit_row(resolved, u) for u in b.layers]}
            for b in resolved.blocks
        ],
        "head": _unit_row(resolved, resolved.head),
        "classifier": {"name": cls.name, "in": cls.in_features, "out": cls.out_features, "dropout": cls.dropout,
                       "init": _init(resolved, f"{cls.name}.weight")},
    }


def build_model(spec_or_resolved: Any, dtype: Any = torch.float32, *, init: bool = True,
                seed: int | None = None) -> EfficientNet:
    """A `torch.nn.Module` for the spec; state_dict keys are exactly the canonical parameter names.

    Accepts an ArchitectureSpec, a ResolvedModel, or a preset name / path. Parameters are
    initialised by the spec's init rules (seeded when `seed` is given) unless `init=False`.
    """
    resolved = as_resolved(spec_or_resolved)
    return build_from_config(config_from_resolved(resolved), as_dtype(dtype), init=init, seed=seed)


# ---- source emission ------------------------------------------------------------------------
def _modules_body() -> str:
    """modules.py without its module docstring (the generated file gets its own)."""
    src = inspect.getsource(modules)
    tree = ast.parse(src)
    first = tree.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines = src.splitlines(keepends=True)
        return "".join(lines[first.end_lineno:]).lstrip("\n")
    return src


def _fmt(value: Any) -> str:
    return pprint.pformat(value, width=200, sort_dicts=False, compact=True)


def _config_source(cfg: dict) -> str:
    """CONFIG as readable Python: one line per unit, one block per group of lines."""
    out = ["CONFIG = {"]
    for key, value in cfg.items():
        if key == "blocks":
            out.append("    'blocks': [")
            for b in value:
                head = {k: v for k, v in b.items() if k != "layers"}
                out.append("        {" + _fmt(head)[1:-1] + ", 'layers': [")
                for layer in b["layers"]:
                    out.append(f"            {_fmt(layer)},")
                out.append("        ]},")
            out.append("    ],")
        else:
            out.append(f"    {key!r}: {_fmt(value)},")
    out.append("}")
    return "\n".join(out)


def _wrapped_string(text: str, width: int = 96) -> str:
    """A long string as adjacent literals, one per line (any content is safe: each chunk is repr'd)."""
    return "\n".join(f"    {text[i:i + width]!r}" for i in range(0, len(text), width))


_TEMPLATE = '''"""{name}: a standalone PyTorch EfficientNet, generated by `effv2 generate --framework torch`.

Needs only torch. `build_model()` returns a torch.nn.Module whose state_dict keys are the
canonical effv2 parameter names, so canonical weights load directly:

    import torch
    from {module} import build_model, load_canonical
    net = build_model(torch.float32)
    load_canonical(net, "weights.safetensors")   # or net.load_state_dict(canonical_state_dict)
    logits = net.eval()(images_nchw)             # training: net.train(); net(x, masks) takes drop masks

The network is the CONFIG table below (from effv2's resolved spec: channels, kernels, strides,
SE widths, residuals, drop-path rates) run by the small modules that follow this docstring.
Conventions: padding {padding!r}, activation {activation!r}, BN eps {eps!r} momentum {momentum!r}
(PyTorch convention) running_var {running_var!r}, input normalisation in the model: {in_model}.
Nominal image size {size}; any size >= the total stride works (TF SAME padding is computed
from the actual input size).

Do not edit by hand; regenerate from the spec (SPEC_JSON below).
"""

{body}

# ---- the network table ------------------------------------------------------------------------
{config}

SPEC_JSON = (
{spec_json}
)


def build_model(dtype: torch.dtype = torch.float32, init: bool = True, seed: Optional[int] = None) -> EfficientNet:
    """Build {name} in `dtype`, initialised by the spec's init rules unless `init` is False."""
    return build_from_config(CONFIG, dtype, init=init, seed=seed)


def load_canonical(model: EfficientNet, path: str) -> EfficientNet:
    """Load a canonical effv2 safetensors file (needs the `safetensors` package) into `model`, strictly."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    ref = model.state_dict()
    model.load_state_dict({{k: v.to(ref[k].dtype) if k in ref else v for k, v in tensors.items()}}, strict=True)
    return model


if __name__ == "__main__":
    net = build_model().eval()
    h, w = CONFIG["image_size"]
    with torch.no_grad():
        out = net(torch.randn(1, len(CONFIG["normalization"]["mean"]), h, w))
    print(CONFIG["name"], "params:", sum(p.numel() for p in net.parameters()), "logits:", tuple(out.shape))
'''


def emit_source(spec_or_resolved: Any, module_name: str = "model") -> str:
    """One readable standalone Python file (torch only) that builds the same model as `build_model`."""
    resolved = as_resolved(spec_or_resolved)
    cfg = config_from_resolved(resolved)
    bn = cfg["batch_norm"]
    safe_name = " ".join(cfg["name"].split()).replace("\\", "/").replace('"', "'")  # docstring-safe
    src = _TEMPLATE.format(
        name=safe_name, module=module_name, padding=cfg["padding"], activation=cfg["activation"], eps=bn["eps"],
        momentum=bn["momentum"], running_var=bn["running_var"], in_model=cfg["normalization"]["in_model"],
        size="x".join(map(str, cfg["image_size"])), body=_modules_body().rstrip() + "\n",
        config=_config_source(cfg), spec_json=_wrapped_string(resolved.spec.model_dump_json()),
    )
    compile(src, f"<effv2 generated {cfg['name']}>", "exec")  # never hand out a file that does not parse
    return src
