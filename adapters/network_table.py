"""The framework-neutral half of every adapter: the CONFIG table and the emitted-source scaffolding.

Each backend's `modules.py` runs a plain-data CONFIG table, so the runtime model and the standalone
file are the same code fed the same table. A row is its resolved unit as it is (every field of
`ConvBN` / `SqueezeExcite` / `Classifier` under the same name, tuples as lists) plus `init`: the
init rule [kind, scale] of every tensor the unit owns, constants included, keyed by the tensor's
name inside the unit ('conv.weight', 'bn.running_var', 'reduce.bias', 'weight'). Nothing is
renamed, picked or recomputed, so a new unit field or init convention reaches the modules with no
edit here. What differs between backends (their modules, their file template) stays in the
backend; the table and the way it is rendered live here, once.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pprint
from types import ModuleType
from typing import Any, Sequence

from effv2_spec.resolve import ResolvedModel, as_resolved


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: the table is JSON-shaped."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _row(unit: Any, inits: dict[str, dict[str, list]]) -> dict:
    """A unit's fields as they are, plus the init rule of each tensor it owns (in the table's order)."""
    row = {f.name: _plain(getattr(unit, f.name)) for f in dataclasses.fields(unit)}
    row["init"] = inits[unit.name]
    return row


def _inits(resolved: ResolvedModel) -> dict[str, dict[str, list]]:
    """unit name -> {tensor name inside the unit: [kind, scale]} for every tensor of the table."""
    out: dict[str, dict[str, list]] = {}
    for p in resolved.params:
        out.setdefault(p.unit, {})[p.name[len(p.unit) + 1:]] = [p.init.kind, float(p.init.scale)]
    return out


def config_from_resolved(resolved: ResolvedModel) -> dict:
    """The plain-data CONFIG table of `resolved` (JSON-compatible)."""
    inits = _inits(resolved)
    return {
        "name": resolved.spec.name,
        "image_size": list(resolved.image_size),
        "padding": resolved.padding,
        "activation": resolved.activation,
        "batch_norm": {"eps": resolved.bn_eps, "momentum": resolved.bn_momentum,
                       "running_var": resolved.bn_running_var},
        "normalization": {"in_model": resolved.normalize_in_model, "mean": list(resolved.input_mean),
                          "std": list(resolved.input_std)},
        "stem": _row(resolved.stem, inits),
        "blocks": [{"index": b.index, "stage": b.stage, "type": b.type, "residual": b.residual,
                    "drop_path_rate": b.drop_path_rate, "layers": [_row(u, inits) for u in b.layers]}
                   for b in resolved.blocks],
        "head": _row(resolved.head, inits),
        "classifier": _row(resolved.classifier, inits),
    }


# ---- source emission ------------------------------------------------------------------------
def module_body(modules: ModuleType | Sequence[ModuleType]) -> str:
    """The source of one module, or of several joined into one file, without their docstrings (the generated
    file gets its own). A later module's `from __future__` line and its relative imports (of the modules
    before it, whose names the joined file already defines) are dropped."""
    parts = []
    for k, module in enumerate([modules] if isinstance(modules, ModuleType) else list(modules)):
        src = inspect.getsource(module)
        lines = src.splitlines(keepends=True)
        drop = set()
        body = ast.parse(src).body
        for node in body:
            docstring = node is body[0] and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str)
            joined_import = k > 0 and isinstance(node, ast.ImportFrom) and (
                node.level > 0 or node.module == "__future__")
            if docstring or joined_import:
                drop.update(range(node.lineno - 1, node.end_lineno))
        parts.append("".join(line for i, line in enumerate(lines) if i not in drop).strip("\n") + "\n")
    return "\n\n".join(parts)


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


def render_source(template: str, spec_or_resolved: Any, modules: ModuleType | Sequence[ModuleType],
                  module_name: str = "model") -> str:
    """Fill a backend's file `template` with its `modules` source, the CONFIG table and the spec JSON.

    Template fields: name, module, padding, activation, eps, momentum, running_var, in_model, size,
    body, config, spec_json. The result is compiled before it is returned: a file that does not
    parse is never handed out.
    """
    resolved = as_resolved(spec_or_resolved)
    cfg = config_from_resolved(resolved)
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
