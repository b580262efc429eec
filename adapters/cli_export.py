"""`effv2 export SPEC --weights W --format onnx -o model.onnx`: a spec with canonical weights as ONNX."""

from __future__ import annotations

from pathlib import Path

import click

from effv2_spec.architecture import MAX_IMAGE_SIZE
from effv2_spec.console import SpecInputError, cannot_write, display_name, load_or_fail
from effv2_spec.documents import load_architecture
from effv2_spec.errors import SpecError
from effv2_spec.resolve import compound_image_size, resolve
from effv2_spec.weights import WeightsError, check_tensors, load_weights


@click.command()
@click.argument("spec")
@click.option("--weights", "weights", required=True, help="Canonical safetensors weights of SPEC.")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True, help="Output format.")
@click.option("-o", "--output", required=True, help="Output file (e.g. model.onnx). Written atomically.")
@click.option("--image-size", type=click.IntRange(min=1, max=MAX_IMAGE_SIZE), default=None,
              help="Input height = width of the graph (default: the spec's eval size). The batch axis is dynamic.")
@click.option("--opset", type=click.IntRange(min=13, max=21), default=None, help="ONNX opset (default 17).")
def export(spec: str, weights: str, fmt: str, output: str, image_size: int | None, opset: int | None) -> None:
    """Export SPEC (a file or preset) with canonical WEIGHTS as an eval-mode ONNX graph.

    Input `images` (batch, C, H, W) float32, output `logits` (batch, classes); the batch axis is
    dynamic, the spatial size fixed (TF "SAME" padding depends on it). Needs torch and onnx.
    """
    from .torch.onnx_export import OPSET, export_onnx

    arch = load_or_fail(load_architecture, spec)
    size = image_size if image_size is not None else compound_image_size(arch, arch.input.eval_image_size)
    if size < arch.total_stride:
        raise SpecInputError(f"--image-size: must be >= the network's total stride {arch.total_stride} (got {size})")
    resolved = resolve(arch, size)
    if not Path(weights).is_file():
        raise SpecInputError(f"{display_name(weights)}: no such file")
    try:
        _, tensors = load_weights(weights)
        check_tensors(resolved, tensors)
    except (WeightsError, SpecError) as exc:
        raise SpecInputError(str(exc)) from None
    try:
        export_onnx(resolved, tensors, output, opset=opset or OPSET)
    except OSError as exc:
        raise cannot_write(output, exc) from None
    click.echo(f"wrote {display_name(output)}: {arch.name} as ONNX opset {opset or OPSET}, input "
               f"(batch, {resolved.input_channels}, {size}, {size}), dynamic batch", err=True)


__all__ = ["export"]
