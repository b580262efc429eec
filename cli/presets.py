"""`effv2 presets [--json]`: the built-in documents and their kinds."""

from __future__ import annotations

import click

from effv2_spec import presets as preset_registry

from .console import echo_json, print_table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON list of {name, kind}.")
def presets(as_json: bool) -> None:
    """List built-in architecture specs, progressive schedules and training configs."""
    listing = preset_registry.listing()
    if as_json:
        echo_json(listing)
        return
    print_table("effv2 presets", ["name", "kind"], [[p["name"], p["kind"]] for p in listing])
