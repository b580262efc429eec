"""`effv2 schema [architecture|schedule|training]`: the published JSON Schema."""

from __future__ import annotations

import json

import click

from effv2_spec.documents import KINDS

_ALIASES = {"architecture": "architecture", "schedule": "progressive_schedule", "training": "training"}


@click.command()
@click.argument("kind", type=click.Choice(list(_ALIASES)), default="architecture")
def schema(kind: str) -> None:
    """Print the JSON Schema of KIND (default: architecture)."""
    model = KINDS[_ALIASES[kind]]
    click.echo(json.dumps(model.model_json_schema(), indent=2))
