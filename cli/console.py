"""Helpers every effv2 command shares: clean one-line errors, loading with exit code 1, JSON and table
output. Nothing here knows any command, so each command module imports it without a cycle through the
group (effv2_cli)."""

from __future__ import annotations

import json
import sys

import click

from effv2_spec.errors import SpecError
from effv2_spec.text import display_name, printable


class SpecInputError(click.ClickException):
    """Invalid user input: printed without the 'Error:' banner noise, exit code 1."""

    exit_code = 1

    def show(self, file=None):
        click.echo(printable(self.format_message()), err=True)  # messages quote files, folder names, labels


def load_or_fail(loader, source: str):
    """Run `loader(source)`; turn a SpecError into a one-line-per-problem click error.

    A bare preset name wins over a file or folder of the same name here; say so on stderr."""
    from effv2_spec.documents import shadowed_preset

    note = shadowed_preset(source)
    if note:
        click.echo(note, err=True)
    try:
        return loader(source)
    except SpecError as exc:
        raise SpecInputError("\n".join(exc.lines(display_name(source)))) from None


def resolve_or_fail(arch, image_size, option: str = "--image-size", prefix: str = ""):
    """`resolve(arch, image_size)`, or a one-line SpecInputError naming `option` (the size rule lives in
    resolve alone)."""
    from effv2_spec.resolve import ImageSizeError, resolve

    try:
        return resolve(arch, image_size)
    except ImageSizeError as exc:
        raise SpecInputError(f"{prefix}{option}: {exc.rule}") from None


def cannot_write(path, exc: OSError) -> SpecInputError:
    """One line for a failed output write: the path the user gave and the system's reason."""
    return SpecInputError(f"{display_name(path)}: cannot write ({exc.strerror or exc})")


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def console():
    """A rich console on stdout when rich is installed, else None (plain text fallback)."""
    try:
        from rich.console import Console
    except ImportError:
        return None
    # piped output gets a wide fixed width so tables are not wrapped into unreadable columns
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)


def print_table(title: str, columns: list[str], rows: list[list], right_align: set[str] = frozenset()) -> None:
    con = console()
    if con is not None:
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for c in columns:
            table.add_column(c, justify="right" if c in right_align else "left")
        for r in rows:
            table.add_row(*("" if v is None else str(v) for v in r))
        con.print(table)
        return
    widths = [max(len(c), *(len("" if r[i] is None else str(r[i])) for r in rows)) if rows else len(c)
              for i, c in enumerate(columns)]
    click.echo(title)
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        click.echo("  ".join(("" if v is None else str(v)).ljust(w) for v, w in zip(r, widths)))
