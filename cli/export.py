"""`effv2 export SPEC --weights W --format onnx|torch-export -o OUT`: a spec with canonical weights as
an ONNX graph or a torch.export program (.pt2)."""

from __future__ import annotations

from pathlib import Path

import click

from effv2_spec.compatibility import check_compatible
from effv2_spec.documents import load_architecture
from effv2_spec.errors import SpecError
from effv2_spec.resolve import compound_image_size
from effv2_spec.weights import WeightsError, check_tensors, load_weights

from .console import SpecInputError, cannot_write, display_name, load_or_fail, resolve_or_fail
from .image_size import ImageSize, ImageSizeOption

#: --format -> what the message calls it
FORMATS = {"onnx": "ONNX", "torch-export": "a torch.export program"}


@click.command()
@click.argument("spec")
@click.option("--weights", "weights", required=True, help="Canonical safetensors weights of SPEC.")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="onnx", show_default=True,
              help="onnx (a .onnx graph) or torch-export (a .pt2 ExportedProgram for torch.export.load).")
@click.option("-o", "--output", required=True, help="Output file (e.g. model.onnx, model.pt2). Written atomically.")
@click.option("--image-size", cls=ImageSizeOption, type=ImageSize(), default=None,
              help="Input size of the graph: N (square) or H W (default: the spec's eval size). The batch axis "
                   "is dynamic.")
@click.option("--opset", type=click.IntRange(min=13, max=21), default=None, help="ONNX opset (default 17).")
def export(spec: str, weights: str, fmt: str, output: str, image_size: tuple[int, int] | None,
           opset: int | None) -> None:
    """Export SPEC (a file or preset) with canonical WEIGHTS as an eval-mode ONNX graph or .pt2 program.

    Input `images` (batch, C, H, W) float32, output `logits` (batch, classes); the batch axis is
    dynamic, the spatial size fixed (TF "SAME" padding depends on it). Needs torch (and onnx for ONNX).
    """
    if opset is not None and fmt != "onnx":
        raise click.UsageError("--opset: only with --format onnx")
    if output == "":
        raise click.BadParameter("an empty path names no file", param_hint="'-o' / '--output'")
    arch = load_or_fail(load_architecture, spec)
    default = compound_image_size(arch, arch.input.eval_image_size)
    height, width = image_size if image_size is not None else (default, default)
    resolved = resolve_or_fail(arch, (height, width))
    if not Path(weights).is_file():
        raise SpecInputError(f"{display_name(weights)}: no such file")
    try:
        file_spec, tensors = load_weights(weights)
        check_compatible(file_spec, arch, weights)
        check_tensors(resolved, tensors)
    except (WeightsError, SpecError) as exc:
        raise SpecInputError(str(exc)) from None
    try:
        what = _write(fmt, resolved, tensors, output, opset)
    except OSError as exc:
        raise cannot_write(output, exc) from None
    except (RuntimeError, MemoryError) as exc:  # the exporter refused the graph or ran out of memory; nothing written
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecInputError(f"{display_name(output)}: --format {fmt} failed: {first}") from None
    click.echo(f"wrote {display_name(output)}: {arch.name} as {what}, input "
               f"(batch, {resolved.input_channels}, {height}, {width}), dynamic batch", err=True)


def _write(fmt: str, resolved, tensors, output: str, opset: int | None) -> str:
    """Write OUTPUT in FMT; returns what was written, for the message."""
    if fmt == "torch-export":
        from effv2_adapters.torch.pt2_export import export_pt2

        export_pt2(resolved, tensors, output)
        return FORMATS[fmt]
    from effv2_adapters.torch.onnx_export import OPSET, export_onnx

    export_onnx(resolved, tensors, output, opset=opset or OPSET)
    return f"ONNX opset {opset or OPSET}"


__all__ = ["export"]
