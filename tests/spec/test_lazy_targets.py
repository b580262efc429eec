"""Every "module:attr" string effv2 loads lazily names something that exists (the CLI commands, the
backend, importer and exporter registries, the framework packages' exports): a typo there would
otherwise surface only when a user runs that one command."""

from __future__ import annotations

import pytest

from effv2_cli import COMMANDS
from effv2_spec.lazy import TargetError, load_target, split_target


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_target_resolves(name):
    pytest.importorskip("torch")
    import click

    assert isinstance(load_target(COMMANDS[name]), click.Command)


def test_every_registry_target_resolves():
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    from effv2_adapters import registry
    from effv2_adapters.conformance import Adapter

    for table in (registry.ADAPTERS, registry.IMPORTERS, registry.EXPORTERS):
        for target in table.values():
            assert callable(load_target(target)), target
    assert all(isinstance(registry.get_adapter(n), Adapter) for n in registry.ADAPTERS)


@pytest.mark.parametrize("package", ["effv2_adapters.torch", "effv2_adapters.jax"])
def test_every_framework_package_export_resolves(package):
    pytest.importorskip(package.rsplit(".", 1)[-1])
    import importlib

    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name


def test_malformed_targets_are_one_line_errors():
    for bad in ("nocolon", ":x", "m:", "a:b:c"):
        with pytest.raises(TargetError, match="expected 'package.module:Name'"):
            split_target(bad)
    with pytest.raises(TargetError, match="has no attribute 'nope'"):
        load_target("json:nope")
