"""`effv2 conformance --framework X`: random specs through the check harness, shrunk and saved on failure."""

from __future__ import annotations

import click
from effv2_adapters.conformance.properties import SPEC_FILE

from .console import SpecInputError, echo_json, printable
from .frameworks import framework_name, load_adapter


@click.command()
@click.option("--framework", "-f", required=True, callback=framework_name,
              help="Backend under test: a built-in or installed name, or package.module:Class.")
@click.option("--against", default="reference", show_default=True, callback=framework_name,
              help="Baseline backend (the oracle by default).")
@click.option("--examples", type=click.IntRange(min=1, max=100_000), default=20, show_default=True,
              help="Random specs to try.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Hypothesis seed.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="dtype of the backend under test (the baseline runs in float64).")
@click.option("--out", "out_dir", default=".", show_default=True,
              help="Folder for conformance-failure.spec.json and conformance-failure.json on a failure.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def conformance(framework: str, against: str, examples: int, seed: int, dtype: str, out_dir: str,
                as_json: bool) -> None:
    """Property-based conformance: random small specs over every convention and odd input sizes,
    each checked like `effv2 check` (logits, gradients, BN statistics, optimiser updates).

    On a failure, hypothesis shrinks it to a minimal spec; the spec and its seed are written to
    --out and the `effv2 check` command that replays it is printed. Exit 0 when every example
    passes, 1 on a failure.
    """
    try:
        from effv2_adapters.conformance.properties import run_conformance
    except ModuleNotFoundError as exc:
        raise SpecInputError(f"effv2 conformance needs hypothesis ({exc}); pip install 'effv2[conformance]'") from None
    _check_out(out_dir)  # a failure takes minutes to find and shrink: do not lose it to an unwritable --out
    adapter = load_adapter(framework)
    baseline = load_adapter(against, "--against")
    progress = None if as_json else (lambda msg: click.echo(f"  .. {msg}", err=True))
    result = run_conformance(framework, examples=examples, seed=seed, dtype=dtype, adapter=adapter, baseline=baseline,
                             out_dir=out_dir, progress=progress)
    if as_json:
        echo_json(result.to_dict())
    elif result.passed:
        click.echo(f"PASS: {framework} agrees with {against} on {examples} random specs ({dtype}, seed {seed})")
    else:
        f = result.failure
        click.echo(f"FAIL: {framework} vs {against} on a {len(f.spec.stages)}-stage spec at "
                   f"{f.image_size}x{f.image_size}, seed {f.seed}: {f.error}")
        if result.write_error:
            click.echo(f"{printable(result.write_error)}; the failing spec follows (save it as {SPEC_FILE})", err=True)
            click.echo(f.spec.model_dump_json(indent=2))
        else:
            click.echo(f"wrote {', '.join(result.files)}")
        click.echo(f"replay: {result.command}")
    if not result.passed:
        raise SystemExit(1)


def _check_out(out_dir: str) -> None:
    """--out must be a folder this process can create files in; probed with a file made and removed at once."""
    import os
    import tempfile
    from pathlib import Path

    if not out_dir:
        raise click.BadParameter("an empty path names no folder", param_hint="'--out'")
    folder = Path(out_dir)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".effv2-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SpecInputError(f"--out {printable(out_dir)}: cannot write there ({exc.strerror or exc})") from None
    finally:
        if created and folder.is_dir():
            try:
                folder.rmdir()  # made only to probe it; the replay creates it again when there is a failure
            except OSError:
                pass


__all__ = ["conformance"]
