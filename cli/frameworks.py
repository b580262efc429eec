"""What the model commands (generate, check, convert, conformance, predict, eval) share: a framework or
peer-format name looked up in `effv2_adapters.registry` (a usage error, exit 2, for an unknown one), an adapter
loaded with one line when its framework is missing, and a spec loaded with exit code 1."""

from __future__ import annotations

import click
from effv2_adapters import registry

from effv2_spec.documents import load_architecture

from .console import SpecInputError, load_or_fail


def known_name(option: str, value: str, table: dict, what: str) -> str:
    """A usage error (exit 2) for a name that is not in a registry table."""
    if value not in table:
        raise click.BadParameter(f"unknown {what} {value!r}; available: {', '.join(table)}", param_hint=option)
    return value


def framework_name(ctx, param, value: str) -> str:
    """A built-in or installed backend name, or a "package.module:Class" (checked when loaded)."""
    if value is None or ":" in value:
        return value
    return known_name(f"--{param.name}", value, dict.fromkeys(registry.framework_names()), "framework")


def load_adapter(framework: str, option: str = "--framework"):
    from effv2_adapters.conformance import CheckError, get_framework

    try:
        return get_framework(framework, option)
    except CheckError as exc:
        raise SpecInputError(str(exc)) from None


def load_spec(spec: str):
    return load_or_fail(load_architecture, spec)
