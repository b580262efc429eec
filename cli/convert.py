"""`effv2 convert`: peer weights (torchvision, timm, Keras, ...) to canonical safetensors and back, through
the importers and exporters of `effv2_adapters.registry`."""

from __future__ import annotations

from pathlib import Path

import click
from effv2_adapters import registry

from effv2_spec.errors import SpecError
from effv2_spec.resolve import resolve
from effv2_spec.weights import WeightsError

from .console import SpecInputError, cannot_write, display_name
from .frameworks import known_name, load_spec


@click.command()
@click.argument("input_path", metavar="INPUT")
@click.option("--from", "source", default=None, help=f"Peer format of INPUT: {', '.join(registry.IMPORTERS)}.")
@click.option("--to", "target", default=None, help=f"Peer format to write: {', '.join(registry.EXPORTERS)}.")
@click.option("--spec", "spec", default=None,
              help="Architecture (file or preset). Required with --from; with --to, defaults to the spec in INPUT.")
@click.option("-o", "--output", required=True, help="Output file (.safetensors with --from; with --to, "
              "a torch.save file, or safetensors when the name ends in .safetensors).")
def convert(input_path: str, source: str | None, target: str | None, spec: str | None, output: str) -> None:
    """Convert peer weights to canonical safetensors (--from) or canonical weights to a peer (--to).

    \b
    effv2 convert --from torchvision|timm|keras|efficientnet_pytorch|dli14 STATE_DICT --spec SPEC -o OUT.safetensors
    effv2 convert --to torchvision|timm|efficientnet_pytorch|dli14 CANONICAL.safetensors [--spec SPEC] -o OUT
    effv2 convert --to keras CANONICAL.safetensors [--spec SPEC] -o OUT.weights.h5
    """
    from effv2_spec.weights import check_tensors, load_weights, save_weights

    if (source is None) == (target is None):
        raise click.UsageError("give exactly one of --from (peer -> canonical) or --to (canonical -> peer)")
    if source is not None:
        known_name("--from", source, registry.IMPORTERS, "source")
        if spec is None:
            raise click.UsageError("--from needs --spec SPEC (the architecture the weights belong to)")
    else:
        known_name("--to", target, registry.EXPORTERS, "target")
    _check_input(input_path, output)
    try:
        if source is not None:
            arch = load_spec(spec)
            importer = _load_target("--from", source, registry.get_importer)
            tensors = importer(input_path, arch)
            check_tensors(resolve(arch), tensors)
            save_weights(output, arch, tensors, extra_metadata={"converted_from": source})
            click.echo(f"wrote {display_name(output)}: {len(tensors)} canonical tensors of {arch.name} from {source}",
                       err=True)
            return
        embedded, tensors = load_weights(input_path)
        arch = load_spec(spec) if spec is not None else embedded
        if arch is None:
            raise SpecInputError(f"{input_path}: the file carries no spec in its metadata; pass --spec SPEC")
        check_tensors(resolve(arch), tensors)
        exporter = _load_target("--to", target, registry.get_exporter)
        written = exporter(tensors, arch, output)  # an exporter may say what it wrote (None: a state dict)
        click.echo(f"wrote {display_name(output)}: {arch.name} as {written or f'a {target} state dict'}", err=True)
    except (WeightsError, SpecError) as exc:
        raise SpecInputError(str(exc)) from None
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename) == Path(output):
            raise cannot_write(output, exc) from None
        raise SpecInputError(f"{display_name(exc.filename or input_path)}: {exc.strerror or exc}") from None


def _check_input(input_path: str, output: str) -> None:
    """INPUT must be a readable file other than OUTPUT (converting in place would destroy the original)."""
    p = Path(input_path)
    if input_path == "":
        raise SpecInputError("'': an empty path names no file")
    if p.is_dir():
        raise SpecInputError(f"{display_name(input_path)}: is a directory, not a weights file")
    if not p.is_file():
        raise SpecInputError(f"{display_name(input_path)}: no such file")
    if Path(output).exists() and Path(output).resolve() == p.resolve():
        raise SpecInputError(f"{display_name(output)}: -o is the input file; write the converted weights elsewhere")


def _load_target(option: str, name: str, getter):
    try:
        return getter(name)
    except (ImportError, AttributeError) as exc:
        raise SpecInputError(f"{option} {name}: the converter cannot be loaded ({exc}); "
                             "is the matching extra installed?") from None
