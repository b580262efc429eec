"""`effv2 validate FILE...`: exit 0 when every document is valid, 1 otherwise."""

from __future__ import annotations

import click

from effv2_spec.documents import load_document, shadowed_preset
from effv2_spec.errors import SpecError

from .console import display_name


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
def validate(files: tuple[str, ...], quiet: bool) -> None:
    """Validate architecture, schedule or training JSON FILES (or preset names).

    Each error is one line on stderr, `FILE: field.path: rule`; every file is reported.
    Exit code 0 when all are valid, 1 when any is not.
    """
    failed = False
    for name in files:
        shown = display_name(name)
        note = shadowed_preset(name)
        if note:
            click.echo(note, err=True)
        try:
            doc = load_document(name)
        except SpecError as exc:
            failed = True
            for line in exc.lines(shown):
                click.echo(line, err=True)
            continue
        if not quiet:
            click.echo(f"{shown}: valid {doc.kind} {doc.name!r}")
    if failed:
        raise SystemExit(1)
