"""`effv2 check`: a backend against the oracle (or another backend) tensor by tensor, or with
`--train-steps` a framework's trainer against the oracle's, end state compared.

Frameworks are looked up in `effv2_adapters.registry`, so a new backend needs no change here. Bad input
(unknown framework, invalid spec, missing framework) is one clear message and exit code 1 or 2, never a
traceback.
"""

from __future__ import annotations

import re

import click
from effv2_adapters import registry
from effv2_adapters.train_check import RECIPES

from effv2_spec.accounting import ResourceError, check_training_fits
from effv2_spec.architecture import MAX_IMAGE_SIZE
from effv2_spec.errors import SpecError
from effv2_spec.training import OPTIMIZERS
from effv2_spec.weights import WeightsError

from .console import SpecInputError, echo_json, print_table
from .frameworks import framework_name, load_adapter, load_spec

#: How torch, XLA and NumPy say they ran out of memory (only then is the size advice right).
_MEMORY_MESSAGE = re.compile(r"out of memory|resource_exhausted|unable to allocate|cannot allocate memory|"
                             r"can't allocate memory|defaultcpuallocator|failed to allocate|\boom\b", re.I)


def _is_memory_error(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or _MEMORY_MESSAGE.search(str(exc)) is not None


@click.command()
@click.argument("spec")
@click.option("--framework", "-f", required=True, callback=framework_name,
              help=f"Backend to check: {', '.join(registry.framework_names())}, an installed plug-in "
                   "(entry points 'effv2.adapters'), or package.module:Class.")
@click.option("--against", "against", default="reference", show_default=True, callback=framework_name,
              help="Baseline backend the first is compared with (any name --framework takes).")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="float64 (tolerance 1e-9) or float32 (1e-4 logits, 1e-3 gradients).")
@click.option("--image-size", type=click.IntRange(min=1, max=MAX_IMAGE_SIZE), default=None,
              help="Input height = width (default: 64, or the total stride if larger; small so the oracle is quick).")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True, help="Batch size.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed for weights, input, masks.")
@click.option("--checks", "checks", default=None,
              help="Comma-separated subset of eval_logits,train_logits,gradients,running_stats, the optimiser updates "
                   f"({','.join(o.model_fields['type'].annotation.__args__[0] for o in OPTIMIZERS)}) and the "
                   "recipe-field checks (<optimiser>.<field> for every field, gradient_clip_norm, "
                   "batch_norm.freeze_affine, weight_decay.*; default all).")
@click.option("--oracle-dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="dtype the oracle runs in.")
@click.option("--per-tensor", is_flag=True, help="Table: one row per tensor instead of one per check.")
@click.option("--train-steps", "train_steps", type=click.IntRange(min=2, max=10_000), default=None,
              help="Instead: train K steps (two stages, every regulariser on) with the framework's trainer and "
                   "with the oracle, and compare the final weights, BN statistics, optimiser state and EMA.")
@click.option("--nproc", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="With --train-steps: processes for the framework's trainer (torch: torchrun, gloo; jax: "
                   "jax.distributed; 127.0.0.1).")
@click.option("--devices", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="With --train-steps and jax: simulated CPU devices per process (a mesh of that many).")
@click.option("--optimizer", type=click.Choice(["rmsprop", "sgd", "adamw"]), default="rmsprop", show_default=True,
              help="With --train-steps: RMSProp with the TF conventions, SGD with Nesterov momentum, or AdamW "
                   "(decoupled decay 0.05 beside the L2).")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default="default", show_default=True,
              help="With --train-steps: BN statistics in groups, or every step clipped with BN frozen (gamma and "
                   "beta fixed).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report (every tensor's relative error).")
def check(spec: str, framework: str, against: str, dtype: str, image_size: int | None, batch: int, seed: int,
          checks: str | None, oracle_dtype: str, per_tensor: bool, train_steps: int | None, nproc: int, devices: int,
          optimizer: str, recipe: str, as_json: bool) -> None:
    """Compare FRAMEWORK's model of SPEC against the NumPy oracle (or --against), tensor by tensor.

    Same canonical weights and input on both sides; compares eval logits, train-mode logits
    (dropout and drop path on, with the oracle's masks), every gradient, BN running statistics
    after the step, and two updates of each optimiser of the spec's schema, then of the same runs with
    one recipe field changed each (every optimiser field, clipping, frozen BN, ...; the check is named by
    the field). The relative error of a tensor is max|a - b| / max|b|. A check the backend lacks the
    capability for (e.g. optimiser steps) is reported "not run", never passed. Exit 0 when every check
    that ran is within tolerance, 1 otherwise.
    """
    from effv2_adapters import conformance
    from effv2_adapters.conformance import CHECKS, CheckError, format_report, verdict

    if train_steps is not None:
        return _train_check(spec, framework, dtype, image_size, seed, train_steps, nproc, optimizer, as_json,
                            devices, recipe)
    if nproc != 1:
        raise click.UsageError("--nproc: only with --train-steps")
    if recipe != "default":
        raise click.UsageError("--recipe: only with --train-steps")
    if devices != 1:
        raise click.UsageError("--devices: only with --train-steps")
    selected = conformance.default_checks(dtype) if checks is None else _selected_checks(checks, CHECKS)
    arch = load_spec(spec)
    try:  # refuse before allocating what cannot fit (one network's training step is a lower bound)
        check_training_fits(arch, image_size or max(64, arch.total_stride), batch, oracle_dtype)
    except ResourceError as exc:
        raise SpecInputError(str(exc)) from None
    adapter = load_adapter(framework)
    baseline = load_adapter(against, "--against")
    progress = None if as_json else (lambda msg: click.echo(f"  .. {msg}", err=True))
    try:
        report = conformance.run_check(arch, framework, dtype=dtype, image_size=image_size, batch=batch, seed=seed,
                                       checks=selected, oracle_dtype=oracle_dtype, adapter=adapter,
                                       baseline=baseline, progress=progress)
    except (CheckError, WeightsError, SpecError) as exc:
        raise SpecInputError(f"{spec}: {exc}") from None
    except (MemoryError, RuntimeError) as exc:  # out of memory, or the framework failed (XLA / torch errors)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        advice = " (a smaller --image-size or --batch needs less memory)" if _is_memory_error(exc) else ""
        raise SpecInputError(f"{spec}: {framework} check failed: {type(exc).__name__}: {first}{advice}") from None
    if as_json:
        echo_json(report.to_dict())
    else:
        columns, rows = format_report(report, per_tensor)
        h, w = report.image_size
        print_table(f"{arch.name}: {framework} {dtype} vs {against} {oracle_dtype}, batch {batch}, {h}x{w}, "
                    f"seed {seed}", columns, rows, right_align={"tensors", "rel err", "tolerance", "s"})
        click.echo(verdict(report))
    if not report.passed:
        raise SystemExit(1)


def _train_check(spec: str, framework: str, dtype: str, image_size: int | None, seed: int, steps: int, nproc: int,
                 optimizer: str, as_json: bool, devices: int = 1, recipe: str = "default") -> None:
    """`effv2 check --train-steps K`: the framework's trainer against the oracle's, end state compared."""
    from effv2_adapters.train_check import run_train_check

    if framework == "reference":
        raise click.UsageError("--train-steps: the oracle is what the trainers are checked against; name a "
                               "framework (torch, jax, or an adapter that can train)")
    if devices != 1 and framework != "jax":
        raise click.UsageError("--devices: simulated devices are for --framework jax")
    arch = load_spec(spec)
    size = image_size or 24
    if size < 16 or size % 8:
        raise click.BadParameter("must be a multiple of 8, at least 16 (the check trains at size - 8, then size)",
                                 param_hint="--image-size")
    if not callable(getattr(load_adapter(framework), "trainer", None)):  # a clear line when torch is missing
        raise SpecInputError(f"--train-steps: the {framework!r} adapter has no `trainer` capability (it can be "
                             "checked, not trained)")
    if not as_json:
        click.echo(f"  .. training {arch.name} {steps} steps with the oracle and with {framework} "
                   f"({nproc} process{'es' if nproc > 1 else ''}"
                   f"{f' x {devices} devices' if devices > 1 else ''}), {dtype}", err=True)
    try:
        report = run_train_check(arch, framework=framework, steps=steps, nproc=nproc, dtype=dtype,
                                 optimizer=optimizer, size=size, seed=seed, devices=devices, recipe=recipe)
    except (ValueError, RuntimeError) as exc:
        raise SpecInputError(f"{spec}: {exc}") from None
    if as_json:
        echo_json(report.to_json())
    else:
        rows = [[p.part, str(p.tensors), p.worst_name, f"{p.worst:.1e}", f"{report.tolerance:.0e}",
                 "ok" if p.worst <= report.tolerance else "FAIL"] for p in report.parts]
        print_table(f"{arch.name}: {framework} trainer ({nproc} process{'es' if nproc > 1 else ''}"
                    f"{f' x {devices} devices' if devices > 1 else ''}) vs oracle, "
                    f"{steps} steps, {dtype}", ["state", "tensors", "worst tensor", "rel err", "tolerance", "result"],
                    rows, right_align={"tensors", "rel err", "tolerance"})
        for problem in report.problems:
            click.echo(problem)
        click.echo("PASS" if report.passed else "FAIL")
    if not report.passed:
        raise SystemExit(1)


def _selected_checks(text: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """The --checks list, or a usage error naming what is wrong with it."""
    selected = tuple(c.strip() for c in text.split(",") if c.strip())
    if not selected:
        raise click.BadParameter(f"names no check; choose from {', '.join(known)}", param_hint="--checks")
    unknown = [c for c in selected if c not in known]
    if unknown:
        raise click.BadParameter(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(known)}",
                                 param_hint="--checks")
    return selected
