"""`effv2 plot RUN... [-o curves.png] [--json]`: the curves of one or several run records.

RUN is a run folder (`effv2 train --out`) or its metrics.jsonl. The figure: loss and held-out
accuracy against step and against wall time, stage boundaries dotted, image sizes labelled,
one colour per run. `--json` prints the same series as data (format `effv2-plot/1`, docs/training.md).
Bad input is one line and exit 1; the PNG is written atomically and never over an existing file
without --overwrite.
"""

from __future__ import annotations

from pathlib import Path

import click

from .console import SpecInputError, cannot_write, display_name, echo_json


def _parse_size(ctx, param, value: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT in pixels (e.g. 1400x900)") from None
    if not (200 <= width <= 8000 and 200 <= height <= 8000):
        raise click.BadParameter(f"{value!r}: width and height must be 200 to 8000 pixels")
    return width, height


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the figure to this PNG.")
@click.option("--label", "labels", multiple=True,
              help="Legend name of each RUN in order (default: the run's folder name); give one per RUN.")
@click.option("--json", "as_json", is_flag=True, help="Print the series as JSON (format effv2-plot/1).")
@click.option("--size", default="1400x900", show_default=True, callback=_parse_size,
              help="PNG size WIDTHxHEIGHT in pixels.")
@click.option("--title", default=None, help="Figure title [default: the run names].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
def plot(runs, output, labels, as_json, size, title, overwrite):
    """Loss and held-out accuracy of RUN... (run folders or metrics.jsonl files) against step and wall time."""
    if output is None and not as_json:
        raise click.UsageError("give -o/--output PNG, --json, or both")
    if labels and len(labels) != len(runs):
        raise click.UsageError(f"--label given {len(labels)} times for {len(runs)} runs; give one per RUN")
    if output is not None and Path(output).exists() and not overwrite:
        raise SpecInputError(f"{display_name(output)}: already exists; pass --overwrite to replace it")

    from effv2_train.plot import FORMAT, RecordError, draw, load_run

    try:
        series = [load_run(run, labels[i] if labels else None) for i, run in enumerate(runs)]
    except RecordError as exc:
        raise SpecInputError(str(exc)) from None
    if output is not None:
        try:
            png = draw(series, size, title)
        except ImportError:
            raise SpecInputError("effv2 plot -o needs matplotlib: pip install 'effv2[plot]'") from None
        from effv2_spec.weights import atomic_write_bytes

        try:
            atomic_write_bytes(output, png)
        except OSError as exc:
            raise cannot_write(output, exc) from None
    if as_json:
        echo_json({"format": FORMAT, "runs": series})
