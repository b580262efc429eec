"""`effv2 train`'s request: its options as one object, checked (which options go with which framework,
--steps or --epochs, ...), and the documents it names with the options' changes; then the other loads
and checks that come before any training (the `--init-from` weights, the oracle's process count) and
the run's closing report.

Kept apart from train.py so that the command reads as request -> setup -> launch -> report.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import click

from effv2_spec.documents import load_architecture, load_schedule, load_training, parse_obj
from effv2_spec.errors import SpecError

from .console import SpecInputError, echo_json, load_or_fail


@dataclass
class TrainRequest:
    """Every option of `effv2 train`, as click parses them (names as in train.py's decorators)."""

    spec_source: str
    schedule_source: str
    training_source: str
    data_source: str
    out_dir: str | None
    resume: bool
    overwrite: bool
    seed: int
    steps: int | None
    epochs: float | None
    dtype: str
    checkpoint_every: int
    threads: int
    workers: int | None
    nproc: int | None
    init_from: str | None
    num_classes: int | None
    frozen_bn: bool
    eval_size: int | None
    stop_at: int | None
    framework: str
    device: str | None
    precision: str
    channels_last: bool
    compile_: bool
    timeout_s: float
    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    as_json: bool
    log_every: int = 10
    tensorboard: bool = False
    eval_every: int = 0
    val_data: str | None = None

    def check(self) -> None:
        """Options that exclude each other: usage errors (exit 2)."""
        if self.steps is not None and self.epochs is not None:
            raise click.UsageError("give at most one of --steps and --epochs")
        if self.resume and self.overwrite:
            raise click.UsageError("give at most one of --resume and --overwrite")

    def check_framework(self, cores: int) -> None:
        """Options that belong to another framework, or more processes than cores: usage errors."""
        check_framework_options(self.framework, nproc=self.nproc, workers=self.workers, cores=cores,
                                device=self.device, precision=self.precision, channels_last=self.channels_last,
                                compile_=self.compile_, coordinator=self.coordinator,
                                num_processes=self.num_processes, process_id=self.process_id)

    def documents(self):
        """(spec, schedule, training config) with --num-classes, --steps / --epochs and --frozen-bn applied."""
        spec = load_or_fail(load_architecture, self.spec_source)
        sched = _override_length(load_or_fail(load_schedule, self.schedule_source), self.schedule_source,
                                 self.steps, self.epochs)
        config = load_or_fail(load_training, self.training_source)
        if self.num_classes is not None:
            spec = _with_changes(spec, self.spec_source, "--num-classes", num_classes=self.num_classes)
        if self.frozen_bn:
            config = _with_changes(config, self.training_source, "--frozen-bn",
                                   batch_norm=dict(config.batch_norm.model_dump(mode="json"), mode="frozen"))
        if self.eval_size is not None:  # resolve() holds the size rule (at least the total stride)
            from effv2_spec.resolve import ImageSizeError, resolve

            try:
                resolve(spec, self.eval_size)
            except ImageSizeError as exc:
                raise click.BadParameter(str(exc).removeprefix("image_size: "), param_hint="'--eval-size'") from None
        return spec, sched, config

    def framework_options(self) -> dict:
        """What an adapter's `trainer` is given: the common options and each built-in framework's own."""
        return dict(dtype=self.dtype, device=self.device, precision=self.precision, timeout_s=self.timeout_s,
                    channels_last=self.channels_last, compile=self.compile_, coordinator=self.coordinator,
                    num_processes=self.num_processes, process_id=self.process_id)

    def writer_rank(self) -> int:
        """This process's rank among the run's processes on a shared --out (only rank 0 locks and writes it)."""
        if self.framework == "reference":
            return 0
        if self.framework == "jax" and self.process_id is not None:
            return self.process_id
        text = os.environ.get("JAX_PROCESS_ID" if self.framework == "jax" else "RANK", "0").strip()
        return int(text) if text.isdigit() else 0


def _override_length(sched, source: str, steps: int | None, epochs: float | None):
    """The schedule with total_steps / total_epochs replaced (stages capped at the new step count)."""
    if steps is None and epochs is None:
        return sched
    doc = json.loads(sched.model_dump_json())
    doc["total_steps"], doc["total_epochs"] = steps, epochs
    if steps is not None:
        doc["num_stages"] = min(doc["num_stages"], steps)
    try:
        return parse_obj(doc)
    except SpecError as exc:
        raise SpecInputError("\n".join(exc.lines(f"{source} (with --steps/--epochs)"))) from None


def _with_changes(doc, source: str, option: str, **changes):
    """`doc` with top-level fields replaced, validated again as a document."""
    data = json.loads(doc.model_dump_json())
    data.update(changes)
    try:
        return parse_obj(data)
    except SpecError as exc:
        raise SpecInputError("\n".join(exc.lines(f"{source} (with {option})"))) from None


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
    from effv2_train.plan import PlanError, TrainingPlan
    from effv2_train.recipe import batch_norm_layout

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
