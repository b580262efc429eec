"""`effv2 train [SPEC] [--schedule S] [--training T] [--data ...] [--out DIR] [--resume] [--seed N] [--json]`.

With no arguments: efficientnetv2-nano on the embedded digits, progressive schedule
progressive-efficientnetv2-nano-paper, recipe training-cpu. Progress bar and one line per
stage go to stdout, or to stderr with --json so stdout holds exactly one JSON object.
Bad input (documents, data, a checkpoint from another run) is one line and exit 1.
"""

from __future__ import annotations

import json
import sys
import time

import click

from effv2_spec.cli.common import SpecInputError, echo_json, load_or_fail
from effv2_spec.documents import load_architecture, load_schedule, load_training, parse_obj
from effv2_spec.errors import SpecError

DEFAULT_SPEC = "efficientnetv2-nano"
DEFAULT_SCHEDULE = "progressive-efficientnetv2-nano-paper"
DEFAULT_TRAINING = "training-cpu"


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


def _stage_line(rec: dict, num_stages: int) -> str:
    regs = rec["regularizers"]
    reg = " ".join(f"{k.replace('randaugment_magnitude', 'randaug').replace('_alpha', '')} {v:.3g}"
                   for k, v in regs.items()) or "none"
    return (f"stage {rec['stage'] + 1}/{num_stages}  size {rec['image_size']:>3}  [{reg}]  "
            f"loss {rec['loss']:.4f}  train {100 * rec['train_accuracy']:.1f}%  "
            f"held-out {100 * rec['heldout_accuracy']:.1f}% (at {rec['eval_size']} px)  "
            f"{rec['images_per_second']:.0f} img/s  {rec['seconds']:.1f} s")


@click.command()
@click.argument("spec_source", metavar="[SPEC]", required=False, default=DEFAULT_SPEC)
@click.option("--schedule", "schedule_source", default=DEFAULT_SCHEDULE, show_default=True,
              help="Progressive schedule: preset name or JSON path.")
@click.option("--training", "training_source", default=DEFAULT_TRAINING, show_default=True,
              help="Training config (optimiser, lr, weight decay, EMA): preset name or JSON path.")
@click.option("--data", "data_source", default="digits", show_default=True,
              help="'digits' (embedded), an .npz with uint8 NHWC 'images' and int 'labels', or a folder "
                   "with one sub-folder of images per class.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for checkpoint.npz and weights.safetensors [default: runs/<spec name>].")
@click.option("--resume", is_flag=True,
              help="Continue from the checkpoint in --out (same spec, schedule, recipe, seed).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Fixes init, data order, augmentation, masks.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override the schedule's total steps.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override the schedule's length in epochs.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Also checkpoint every N steps (0: only at stage ends).")
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="BLAS threads for the matrix products (0: the library's default). One is the default: "
                   "the oracle's GEMMs are small, and spare BLAS threads spin-wait badly on a busy machine.")
@click.option("--json", "as_json", is_flag=True,
              help="End with one JSON object (final_accuracy, seconds, stages, ...).")
def train(spec_source, schedule_source, training_source, data_source, out_dir, resume, seed, steps, epochs, dtype,
          checkpoint_every, threads, as_json):
    """Train SPEC with the NumPy/Numba oracle, progressively, on CPU."""
    t_start = time.perf_counter()
    if steps is not None and epochs is not None:
        raise click.UsageError("give at most one of --steps and --epochs")
    spec = load_or_fail(load_architecture, spec_source)
    sched = _override_length(load_or_fail(load_schedule, schedule_source), schedule_source, steps, epochs)
    config = load_or_fail(load_training, training_source)

    # imported here: numba and the oracle load only once the documents are known to be good
    from .checkpoint import CheckpointError
    from .data.sources import DataError, load_source, split
    from .train import Trainer, TrainingDiverged

    try:
        store_size = max(sched.image_size.end, spec.input.eval_image_size)
        data = load_source(data_source, spec.num_classes, spec.input.channels, store_size)
        train_data, heldout = split(data)
    except DataError as exc:
        raise SpecInputError(str(exc)) from None
    out = out_dir if out_dir is not None else f"runs/{spec.name}"
    try:
        trainer = Trainer(spec, sched, config, train_data, heldout, seed=seed, dtype=dtype, out_dir=out,
                          checkpoint_every=checkpoint_every or None)
        if resume:
            trainer.resume()
    except CheckpointError as exc:
        raise SpecInputError(str(exc)) from None
    except ValueError as exc:  # a schedule the data cannot fill, an unsupported regulariser
        raise SpecInputError(f"{schedule_source}: {exc}") from None

    stream = sys.stderr if as_json else sys.stdout
    echo = (lambda s: click.echo(s, err=as_json))
    n_stages = len(trainer.stages)
    echo(f"training {spec.name} on {data.name} ({len(train_data)} train / {len(heldout)} held-out, "
         f"{train_data.images.shape[1]} px stored): {sched.name} ({n_stages} stages, {trainer.total_steps} steps), "
         f"{config.name} (batch {trainer.batch}), seed {seed}, {dtype}"
         + (f", resumed at step {trainer.step}" if resume else ""))

    try:
        with _blas_threads(threads):
            result = _run_with_progress(trainer, stream, echo, n_stages)
    except TrainingDiverged as exc:
        raise SpecInputError(f"{spec.name}: {exc}") from None
    except OSError as exc:  # checkpoints and weights go to --out
        raise SpecInputError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})") from None
    except KeyboardInterrupt:
        kept = (f"checkpoint at step {trainer.last_checkpoint_step} in {out}; continue with --resume"
                if trainer.last_checkpoint_step is not None else "no checkpoint written yet")
        click.echo(f"interrupted at step {trainer.step}: {kept}", err=True)
        sys.exit(130)
    seconds = time.perf_counter() - t_start
    echo(f"held-out accuracy {100 * result.final_accuracy:.2f}% after {result.steps} steps in {seconds:.1f} s; "
         f"weights: {result.weights_path}")
    if as_json:
        payload = result.to_json()
        payload.update(seconds=seconds, training_seconds=result.seconds, spec=spec.name, schedule=sched.name,
                       training=config.name, data=data.name, seed=seed, dtype=dtype,
                       train_images=len(train_data), heldout_images=len(heldout))
        echo_json(payload)


def _blas_threads(n: int):
    """A context limiting BLAS threads to n (threadpoolctl comes with scikit-learn); a no-op for 0 or without it."""
    import contextlib

    if n == 0:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _run_with_progress(trainer, stream, echo, n_stages):
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.console import Console
    except ImportError:  # rich is a dependency, but keep training usable without it
        return trainer.run(on_stage=lambda rec: echo(_stage_line(rec, n_stages)))
    console = Console(file=stream)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("training", total=trainer.total_steps, completed=trainer.step, loss="-")

        def on_step(step, total, loss):
            progress.update(task, completed=step, loss=f"{loss:.4f}")

        def on_stage(rec):
            progress.console.print(_stage_line(rec, n_stages), markup=False, highlight=False, soft_wrap=True)

        return trainer.run(on_step=on_step, on_stage=on_stage)
