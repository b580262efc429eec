"""The commands live in one package, `effv2_cli` (folder cli/): every `effv2` subcommand is defined there, and
the library packages (spec, training, oracle, adapters) neither import click nor the command line, so each can
be used, and tested, without it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from effv2_cli import COMMANDS

LIBRARIES = ("effv2_spec", "effv2_train", "effv2_reference", "effv2_adapters")


def _sources(package: str) -> list[Path]:
    root = Path(importlib.import_module(package).__path__[0])
    return sorted(root.rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_every_command_is_defined_in_the_cli_package():
    modules = {target.split(":")[0] for target in COMMANDS.values()}
    assert all(m.startswith("effv2_cli.") for m in modules), sorted(modules)


@pytest.mark.parametrize("package", LIBRARIES)
def test_library_packages_import_neither_click_nor_the_command_line(package):
    offenders = {}
    for path in _sources(package):
        bad = {m for m in _imported_modules(path) if m.split(".")[0] in ("click", "effv2_cli")}
        if bad:
            offenders[str(path)] = sorted(bad)
    assert not offenders, offenders


def test_every_click_command_in_the_cli_package_is_reachable_from_the_group():
    """A command module nobody registers would be dead code that still looks like a command."""
    registered = {tuple(target.split(":")) for target in COMMANDS.values()}
    defined = set()
    for path in _sources("effv2_cli"):
        if path.name == "__init__.py":  # the group itself, and its stand-in for a command whose extra is missing
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                call = deco.func if isinstance(deco, ast.Call) else deco
                if (isinstance(call, ast.Attribute) and isinstance(call.value, ast.Name) and call.value.id == "click"
                        and call.attr in ("command", "group")):
                    defined.add((f"effv2_cli.{path.stem}", node.name))
    assert defined == registered, (sorted(defined - registered), sorted(registered - defined))


def test_the_planted_offence_is_seen(tmp_path):
    """The scan above can fail: a module importing click is found."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from click import echo\n    import effv2_cli.console\n")
    assert _imported_modules(planted) == {"click", "effv2_cli.console"}
