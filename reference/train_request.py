"""The checks and loads of `effv2 train` that come before any training: which options go with which
framework, the `--init-from` weights, the oracle's process count; and the run's closing report.

Kept apart from cli_train.py so that the command reads as parse -> check -> load -> launch -> report.
"""

from __future__ import annotations

import os

import click

from effv2_spec.console import SpecInputError, echo_json


def check_framework_options(framework: str, *, nproc, workers, cores: int, device, precision, channels_last,
                            compile_, coordinator, num_processes, process_id) -> None:
    """Options that belong to another framework, or ask for more processes than cores: a usage error."""
    torch_options = {"--device": device is not None, "--precision": precision != "float32",
                     "--channels-last": channels_last, "--compile": compile_}
    jax_options = {"--coordinator": coordinator is not None, "--num-processes": num_processes is not None,
                   "--process-id": process_id is not None}
    if framework != "jax":
        given = [k for k, v in jax_options.items() if v]
        if given:
            raise click.UsageError(f"{', '.join(given)}: only with --framework jax")
    if framework == "jax":
        given = [k for k in ("--channels-last", "--compile") if torch_options[k]]
        if given:
            raise click.UsageError(f"{', '.join(given)}: only with --framework torch")
    if framework == "reference":
        given = [k for k, v in torch_options.items() if v]
        if given:
            raise click.UsageError(f"{', '.join(given)}: only with --framework torch or jax")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SpecInputError("the oracle starts its own processes (--nproc); under torchrun use --framework torch")
    elif nproc is not None and nproc != 1:
        raise click.UsageError("--nproc: only with --framework reference (torch: torchrun; jax: its devices)")
    if workers is not None and workers > cores:
        raise click.UsageError(f"--workers {workers}: this machine has {cores} cores; more loader processes "
                               "than cores only wait for each other")


def load_initial(init_from, spec, *, new_classifier: bool):
    """(path, tensors) of `--init-from`, checked against the spec (another class count only with
    --num-classes, which draws a new classifier), or None."""
    if init_from is None:
        return None
    from effv2_spec.compatibility import check_compatible
    from effv2_spec.weights import WeightsError, load_weights

    try:
        file_spec, tensors = load_weights(init_from)
    except (WeightsError, OSError, ValueError) as exc:
        text = str(exc)  # load_weights names the file already
        raise SpecInputError(text if text.startswith(str(init_from)) else
                             f"{init_from}: cannot read weights ({exc})") from None
    try:
        check_compatible(file_spec, spec, init_from, new_classifier=new_classifier)
    except WeightsError as exc:
        raise SpecInputError(str(exc)) from None
    return init_from, tensors


def oracle_world(spec, sched, config, num_train: int, seed: int, nproc, *, cores: int, auto_processes) -> int:
    """How many oracle processes share the batch: --nproc, else `auto_processes(plan)`; a count that cannot
    split the batch or its BN groups is one line."""
    from .plan import PlanError, TrainingPlan
    from .train import batch_norm_layout

    try:
        plan = TrainingPlan(spec, sched, config, num_train, seed=seed)
    except (PlanError, ValueError):
        plan = None  # the plan's own complaint is reported later, by the trainer, in one line
    world = nproc or (auto_processes(plan) if plan is not None else 1)
    if nproc is not None and nproc > cores:
        raise click.UsageError(f"--nproc {nproc}: this machine has {cores} cores; more processes than cores "
                               "only wait for each other")
    if plan is not None and world > 1:
        try:
            plan.shards(world)
            batch_norm_layout(plan, world)
        except PlanError as exc:
            raise SpecInputError(f"--nproc {world}: {exc}") from None
    return world


def report(trainer, result, *, seconds: float, out, as_json: bool, facts: dict) -> None:
    """The closing line (rank 0 only) and, with --json, the one JSON object: the result, `facts` (documents,
    data, seed) and, for JAX, the compile seconds and cache lookups of each stage's step."""
    if trainer.backend.rank != 0:
        return
    if result.extra.get("stopped_at") is not None:
        click.echo(f"stopped at step {result.steps} of {trainer.total_steps} in {seconds:.1f} s; checkpoint in "
                   f"{out} (continue with --resume)", err=as_json)
    else:
        click.echo(f"held-out accuracy {100 * result.final_accuracy:.2f}% after {result.steps} steps in "
                   f"{seconds:.1f} s; weights: {result.weights_path}", err=as_json)
    if not as_json:
        return
    payload = result.to_json()
    payload.update(seconds=seconds, training_seconds=result.seconds, **facts)
    if getattr(trainer.backend, "compile_seconds", None) is not None:  # jax: seconds compiling each stage's step
        payload["compile_seconds"] = dict(trainer.backend.compile_seconds)
        payload["compile_cache"] = dict(trainer.backend.compile_cache)
        payload["devices"] = len(trainer.backend.procs.devices)
    echo_json(payload)
