"""`effv2 generate`, `effv2 check` and `effv2 convert`: framework-agnostic, through the adapter registry.

Frameworks and peer formats are looked up in `effv2_adapters.registry`, so a new backend or
importer needs no change here. Bad input (unknown preset or framework, invalid spec, missing
framework, mismatched weights) is one clear message and exit code 1, never a traceback.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from effv2_spec.cli.common import SpecInputError, echo_json, load_or_fail, print_table
from effv2_spec.documents import load_architecture
from effv2_spec.errors import SpecError
from effv2_spec.resolve import compound_image_size, resolve
from effv2_spec.weights import WeightsError, atomic_write_bytes

from . import registry


def _adapter(framework: str):
    if framework not in registry.ADAPTERS:
        raise SpecInputError(f"--framework: unknown framework {framework!r}; available: {', '.join(registry.ADAPTERS)}")
    try:
        adapter = registry.get_adapter(framework)
    except ImportError as exc:
        raise SpecInputError(f"--framework {framework}: the {framework} adapter cannot be imported ({exc}); "
                             f"install it, e.g. pip install 'effv2[{framework}]'") from None
    reason = adapter.available()
    if reason:
        raise SpecInputError(f"--framework {framework}: not available: {reason}")
    return adapter


def _load_spec(spec: str):
    return load_or_fail(load_architecture, spec)


# ---- generate ----------------------------------------------------------------------------------------
@click.command()
@click.argument("spec")
@click.option("--framework", "-f", required=True, help=f"Target framework: {', '.join(registry.ADAPTERS)}.")
@click.option("-o", "--output", default="-", show_default=True, help="Output .py file ('-' for stdout).")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Nominal image size recorded in the file (default: the spec's eval size; any size runs).")
def generate(spec: str, framework: str, output: str, image_size: int | None) -> None:
    """Emit one standalone source file building SPEC (a file or preset name) in FRAMEWORK.

    The file needs only the framework itself; its parameter names are the canonical effv2
    names, so canonical safetensors weights load into it directly. Written atomically.
    """
    arch = _load_spec(spec)
    adapter = _adapter(framework)
    size = image_size if image_size is not None else compound_image_size(arch, arch.input.eval_image_size)
    if size < arch.total_stride:
        raise SpecInputError(f"--image-size: must be >= the network's total stride {arch.total_stride} (got {size})")
    resolved = resolve(arch, size)
    kwargs = {}
    if output != "-" and "module_name" in inspect.signature(adapter.emit_source).parameters:
        kwargs["module_name"] = Path(output).stem
    source = adapter.emit_source(resolved, **kwargs)
    if output == "-":
        click.echo(source, nl=False)
        return
    atomic_write_bytes(output, source.encode("utf-8"))
    click.echo(f"wrote {output}: {arch.name} for {framework} ({len(source.splitlines())} lines)", err=True)


# ---- check ---------------------------------------------------------------------------------------------
@click.command()
@click.argument("spec")
@click.option("--framework", "-f", required=True, help=f"Framework to check: {', '.join(registry.ADAPTERS)}.")
@click.option("--dtype", default="float64", show_default=True,
              help="float64 (tolerance 1e-9) or float32 (1e-4 logits, 1e-3 gradients).")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Input height = width (default: 64, or the total stride if larger; small so the oracle is quick).")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True, help="Batch size.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for weights, input, masks.")
@click.option("--checks", "checks", default=None,
              help="Comma-separated subset of eval_logits,train_logits,gradients,running_stats,sgd,rmsprop (default all).")
@click.option("--oracle-dtype", default="float64", show_default=True, help="dtype the oracle runs in.")
@click.option("--per-tensor", is_flag=True, help="Table: one row per tensor instead of one per check.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report (every tensor's relative error).")
def check(spec: str, framework: str, dtype: str, image_size: int | None, batch: int, seed: int, checks: str | None,
          oracle_dtype: str, per_tensor: bool, as_json: bool) -> None:
    """Compare FRAMEWORK's model of SPEC against the NumPy oracle, tensor by tensor.

    Same canonical weights and input on both sides; compares eval logits, train-mode logits
    (dropout and drop path on, with the oracle's masks), every gradient, BN running statistics
    after the step, and the update of one SGD and one RMSProp (TF convention) run. The relative
    error of a tensor is max|a - b| / max|b|. Exit 0 when every check is within tolerance, 1 otherwise.
    """
    from .check import CHECKS, CheckError, format_report, run_check

    arch = _load_spec(spec)
    if dtype not in ("float64", "float32"):
        raise SpecInputError(f"--dtype: must be float64 or float32 (got {dtype!r})")
    if oracle_dtype not in ("float64", "float32"):
        raise SpecInputError(f"--oracle-dtype: must be float64 or float32 (got {oracle_dtype!r})")
    adapter = _adapter(framework)
    selected = CHECKS if checks is None else tuple(c.strip() for c in checks.split(",") if c.strip())
    progress = None if as_json else (lambda msg: click.echo(f"  .. {msg}", err=True))
    try:
        report = run_check(arch, framework, dtype=dtype, image_size=image_size, batch=batch, seed=seed,
                           checks=selected, oracle_dtype=oracle_dtype, adapter=adapter, progress=progress)
    except (CheckError, WeightsError, SpecError) as exc:
        raise SpecInputError(f"{spec}: {exc}") from None
    except (MemoryError, RuntimeError) as exc:  # out of memory, or the framework failed (XLA / torch errors)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        raise SpecInputError(f"{spec}: {framework} check failed: {type(exc).__name__}: {first} "
                             "(a smaller --image-size or --batch needs less memory)") from None
    if as_json:
        echo_json(report.to_dict())
    else:
        columns, rows = format_report(report, per_tensor)
        h, w = report.image_size
        print_table(f"{arch.name}: {framework} {dtype} vs oracle {oracle_dtype}, batch {batch}, {h}x{w}, seed {seed}",
                    columns, rows, right_align={"tensors", "rel err", "tolerance", "s"})
        click.echo("PASS" if report.passed else "FAIL")
    if not report.passed:
        raise SystemExit(1)


# ---- convert -------------------------------------------------------------------------------------------
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
    effv2 convert --from torchvision|timm|keras STATE_DICT --spec SPEC -o OUT.safetensors
    effv2 convert --to torchvision|timm CANONICAL.safetensors [--spec SPEC] -o OUT
    """
    from effv2_spec.weights import check_tensors, load_weights, save_weights

    if (source is None) == (target is None):
        raise SpecInputError("give exactly one of --from (peer -> canonical) or --to (canonical -> peer)")
    if not Path(input_path).is_file():
        raise SpecInputError(f"{input_path}: no such file")
    try:
        if source is not None:
            if source not in registry.IMPORTERS:
                raise SpecInputError(f"--from: unknown source {source!r}; available: {', '.join(registry.IMPORTERS)}")
            if spec is None:
                raise SpecInputError("--from needs --spec SPEC (the architecture the weights belong to)")
            arch = _load_spec(spec)
            importer = _load_target("--from", source, registry.get_importer)
            tensors = importer(input_path, arch)
            check_tensors(resolve(arch), tensors)
            save_weights(output, arch, tensors, extra_metadata={"converted_from": source})
            click.echo(f"wrote {output}: {len(tensors)} canonical tensors of {arch.name} from {source}", err=True)
            return
        if target not in registry.EXPORTERS:
            raise SpecInputError(f"--to: unknown target {target!r}; available: {', '.join(registry.EXPORTERS)}")
        embedded, tensors = load_weights(input_path)
        arch = _load_spec(spec) if spec is not None else embedded
        if arch is None:
            raise SpecInputError(f"{input_path}: the file carries no spec in its metadata; pass --spec SPEC")
        check_tensors(resolve(arch), tensors)
        exporter = _load_target("--to", target, registry.get_exporter)
        exporter(tensors, arch, output)
        click.echo(f"wrote {output}: {arch.name} as a {target} state dict", err=True)
    except (WeightsError, SpecError) as exc:
        raise SpecInputError(str(exc)) from None


def _load_target(option: str, name: str, getter):
    try:
        return getter(name)
    except (ImportError, AttributeError) as exc:
        raise SpecInputError(f"{option} {name}: the converter cannot be loaded ({exc}); "
                             "is the matching extra installed?") from None


__all__ = ["generate", "check", "convert"]
