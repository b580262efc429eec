"""`effv2 generate`: one standalone model file for a framework, through the adapter registry."""

from __future__ import annotations

from pathlib import Path

import click
from effv2_adapters import registry

from effv2_spec.architecture import MAX_IMAGE_SIZE
from effv2_spec.resolve import compound_image_size
from effv2_spec.weights import atomic_write_bytes

from .console import SpecInputError, cannot_write, display_name, resolve_or_fail
from .frameworks import framework_name, load_adapter, load_spec


@click.command()
@click.argument("spec")
@click.option("--framework", "-f", required=True, callback=framework_name,
              help=f"Target framework: {', '.join(registry.framework_names())}, or package.module:Class.")
@click.option("-o", "--output", default="-", show_default=True, help="Output .py file ('-' for stdout).")
@click.option("--image-size", type=click.IntRange(min=1, max=MAX_IMAGE_SIZE), default=None,
              help="Nominal image size recorded in the file (default: the spec's eval size; any size runs).")
def generate(spec: str, framework: str, output: str, image_size: int | None) -> None:
    """Emit one standalone source file building SPEC (a file or preset name) in FRAMEWORK.

    The file needs only the framework itself; its parameter names are the canonical effv2
    names, so canonical safetensors weights load into it directly. Written atomically.
    """
    arch = load_spec(spec)
    adapter = load_adapter(framework)
    size = image_size if image_size is not None else compound_image_size(arch, arch.input.eval_image_size)
    resolved = resolve_or_fail(arch, size)
    if not callable(getattr(adapter, "emit_source", None)):
        raise SpecInputError(f"--framework {framework}: this backend cannot emit source (no emit_source)")
    source = adapter.emit_source(resolved, module_name=Path(output).stem if output != "-" else "model")
    if output == "-":
        click.echo(source, nl=False)
        return
    try:
        atomic_write_bytes(output, source.encode("utf-8"))
    except OSError as exc:
        raise cannot_write(output, exc) from None
    click.echo(f"wrote {display_name(output)}: {arch.name} for {framework} ({len(source.splitlines())} lines)",
               err=True)
