"""`effv2 summary SPEC [--image-size N] [--json]`: per-block shapes, parameters, MACs."""

from __future__ import annotations

import click

from effv2_spec.accounting import block_rows, count
from effv2_spec.architecture import MAX_IMAGE_SIZE
from effv2_spec.documents import load_architecture
from effv2_spec.resolve import compound_image_size

from .console import echo_json, load_or_fail, print_table, resolve_or_fail


@click.command()
@click.argument("spec")
@click.option("--image-size", type=click.IntRange(min=1, max=MAX_IMAGE_SIZE), default=None,
              help="Input height = width (default: the spec's eval size).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (params, buffers, macs, blocks).")
def summary(spec: str, image_size: int | None, as_json: bool) -> None:
    """Per-block shapes, parameters and multiply-accumulates of SPEC (a file or preset name).

    `params` counts trainable tensors (PyTorch sum(p.numel())); `buffers` the BN running
    statistics; `macs` the multiply-accumulates of conv and dense layers.
    """
    arch = load_or_fail(load_architecture, spec)
    size = image_size if image_size is not None else compound_image_size(arch, arch.input.eval_image_size)
    resolved = resolve_or_fail(arch, size, prefix=f"{spec}: ")
    acc = count(resolved)
    rows = block_rows(resolved, acc)
    if as_json:
        echo_json({
            "name": arch.name, "image_size": size, "width": resolved.width, "depth": resolved.depth,
            "blocks_count": len(resolved.blocks), "params": acc.params, "buffers": acc.buffers,
            "params_with_buffers": acc.params_with_buffers, "macs": acc.macs, "blocks": rows,
        })
        return
    table_rows = []
    for r in rows:
        kind = r["type"]
        detail = ""
        if kind in ("fused_mbconv", "mbconv"):
            detail = f"k{r['kernel']} s{r['stride']} e{r['expanded_channels']}"
            detail += f" se{r['se_channels']}" if r["se_channels"] else ""
            detail += " +res" if r["residual"] else ""
        table_rows.append([r["name"], r.get("stage", ""), kind, detail, "x".join(map(str, r["in_shape"])),
                           "x".join(map(str, r["out_shape"])), f"{r['params']:,}", f"{r['macs']:,}"])
    print_table(f"{arch.name} @ {size}x{size}", ["unit", "stage", "type", "detail", "in", "out", "params", "MACs"],
                table_rows, right_align={"params", "MACs"})
    click.echo(f"blocks: {len(resolved.blocks)}  params: {acc.params:,}  BN buffers: {acc.buffers:,}  "
               f"MACs: {acc.macs:,} ({acc.macs / 1e9:.3f} G)")
