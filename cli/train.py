"""`effv2 train [SPEC] [--schedule S] [--training T] [--data ...] [--out DIR] [--resume] [--seed N] [--json]`.

With no arguments: efficientnetv2-nano on the embedded digits, progressive schedule
progressive-efficientnetv2-nano-paper, recipe training-cpu. Progress bar and one line per
stage go to stdout, or to stderr with --json so stdout holds exactly one JSON object.
Bad input (documents, data, a checkpoint from another run) is one line and exit 1.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import time

import click

from .console import SpecInputError
from .frameworks import framework_name
from .train_request import TrainRequest, report
from .train_setup import adapter_for, build_trainer, first_line, header, prepare_run

DEFAULT_SPEC = "efficientnetv2-nano"
DEFAULT_SCHEDULE = "progressive-efficientnetv2-nano-paper"
DEFAULT_TRAINING = "training-cpu"
AUTO_WORKER_STEPS = 500  # --workers / --nproc auto: runs shorter than this stay in one process
AUTO_MAX_PROCESSES = 4  # --nproc auto: at most this many oracle processes,
AUTO_MIN_ROWS = 16  # each with at least this many rows of the batch (fewer waste the fixed cost of a step)


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
              help="'digits' (embedded), an .npz with uint8 NHWC 'images' and int 'labels', an image folder "
                   "(ROOT/<class>/..., or ROOT/train/<class>/... with ROOT/val/ as the validation split) or "
                   "Parquet shards (a folder of them, train-*/validation-* splits, or a glob).")
@click.option("--val-data", "val_data", default=None,
              help="Validation set (any --data kind) instead of the data set's own val/ split or a held-out "
                   "fifth of --data.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for checkpoint.npz, weights.safetensors and the record metrics.jsonl "
                   "[default: runs/<spec name>].")
@click.option("--resume", is_flag=True,
              help="Continue from the checkpoint in --out (same spec, schedule, recipe, seed).")
@click.option("--overwrite", is_flag=True,
              help="Replace the checkpoint and weights of an earlier run in --out (refused without it).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Fixes init, data order, augmentation, masks.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override the schedule's total steps.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override the schedule's length in epochs.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Also checkpoint every N steps (0: only at stage ends).")
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="Threads for the oracle (N > 1: its kernels and GEMMs split over one shared pool of N threads "
                   "whose idle workers block instead of spinning; 0: BLAS's own default). One is the default: "
                   "spare BLAS threads spin-wait badly on a busy machine. With --framework torch: its CPU threads.")
@click.option("--workers", default="auto", show_default=True, callback=lambda ctx, param, v: _parse_workers(v),
              help="Processes preparing the images (crop, flip, RandAugment) of the next steps, two steps ahead; "
                   "0: in this "
                   f"process; auto: one when this machine has a spare core and the run has {AUTO_WORKER_STEPS}+ steps "
                   "in one process. The result does not depend on it.")
@click.option("--nproc", default="auto", show_default=True, callback=lambda ctx, param, v: _parse_nproc(v),
              help="Oracle processes on this machine, each computing 1/N of every batch (BN statistics, loss and "
                   "gradients summed through shared memory): the same run up to floating-point rounding. auto: one "
                   f"per core (at most {AUTO_MAX_PROCESSES}, {AUTO_MIN_ROWS}+ rows each) for runs of "
                   f"{AUTO_WORKER_STEPS}+ steps, else 1.")
@click.option("--init-from", "init_from", default=None, type=click.Path(dir_okay=False),
              help="Start from these canonical weights (e.g. from `effv2 convert`) instead of the seeded init.")
@click.option("--num-classes", "num_classes", type=click.IntRange(min=1, max=1_000_000), default=None,
              help="Train with this many classes (a new classifier drawn by the spec's init rule; with "
                   "--init-from every other tensor is loaded).")
@click.option("--frozen-bn", "frozen_bn", is_flag=True,
              help="Train with batch norm in inference mode (running statistics, not updated): fine-tuning.")
@click.option("--eval-size", "eval_size", type=click.IntRange(min=1, max=8192), default=None,
              help="Held-out evaluation size after the last stage [default: the spec's eval_image_size].")
@click.option("--stop-at", "stop_at", type=click.IntRange(min=1), default=None,
              help="Stop after this global step with a checkpoint (continue later with --resume, with any "
                   "framework or number of processes).")
@click.option("--framework", default="reference", show_default=True, metavar="NAME", callback=framework_name,
              help="Who computes the steps: reference (the NumPy oracle), torch (also under torchrun, one process "
                   "per device), jax (every local device; several hosts with --coordinator), or an installed "
                   "adapter that can train (entry point effv2.adapters, or 'module:Class'). Same plan, same result.")
@click.option("--device", default=None,
              help="torch: cpu, cuda or cuda:N [default: cuda when available]; jax: cpu, gpu or tpu [default: jax's].")
@click.option("--precision", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
              show_default=True, help="torch: autocast precision (float16 with a gradient scaler, CUDA only); "
                                        "jax: float32 or bfloat16 compute (float32 weights).")
@click.option("--channels-last", "channels_last", is_flag=True, help="torch: channels-last memory format.")
@click.option("--compile", "compile_", is_flag=True, help="torch: torch.compile the model (one compile per stage).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1.0), default=600.0, show_default=True,
              help="oracle with --nproc N and torch under torchrun: seconds a collective waits for the other processes "
                   "before failing; jax: seconds to join the --coordinator.")
@click.option("--coordinator", default=None, metavar="ADDR:PORT",
              help="jax on several processes / hosts: the jax.distributed coordinator (process 0 listens there); "
                   "default from JAX_COORDINATOR_ADDRESS. Joining waits at most --timeout seconds.")
@click.option("--num-processes", "num_processes", type=click.IntRange(min=1), default=None,
              help="jax with --coordinator: number of processes (default JAX_NUM_PROCESSES).")
@click.option("--process-id", "process_id", type=click.IntRange(min=0), default=None,
              help="jax with --coordinator: this process's index (default JAX_PROCESS_ID).")
@click.option("--log-every", "log_every", type=click.IntRange(min=1), default=10, show_default=True,
              help="A line of metrics.jsonl in --out every N steps (also at each stage end and checkpoint).")
@click.option("--tensorboard", is_flag=True,
              help="Also write the record as TensorBoard event files under <out>/tensorboard/.")
@click.option("--eval-every", "eval_every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Held-out accuracy at the stage's size and the final size every N steps inside stages, in "
                   "metrics.jsonl (0: at stage ends only).")
@click.option("--json", "as_json", is_flag=True,
              help="End with one JSON object (final_accuracy, seconds, stages, ...).")
def train(**options):
    """Train SPEC progressively: with the NumPy/Numba oracle on CPU, with PyTorch (torchrun for many devices),
    with JAX (every local device; --coordinator for several processes / hosts) or with any installed adapter
    that can train."""
    t_start = time.perf_counter()
    request = TrainRequest(**options)
    request.check()
    documents = request.documents()
    if request.framework == "reference":
        _require_numba()
    elif request.framework not in ("torch", "jax"):
        adapter_for(request.framework)  # an adapter that cannot train is one line before any data is read
    request.check_framework(_cores())
    if request.framework == "jax":  # several processes: a dead peer aborts the survivors in C++; a child takes that
        supervise = importlib.import_module("effv2_adapters.jax.supervise")
        if supervise.wanted(request.coordinator):
            sys.exit(supervise.run(request.out_dir, documents[0].name, request.process_id, request.num_processes))
    setup = prepare_run(request, documents, cores=_cores(), auto_processes=_auto_processes)
    held: dict = {}  # rank 0's trainer, for the messages after an interruption
    _settle_process()
    trainer, result = _launch(setup.world, lambda replica: _run_rank(setup, replica, held), held, spec=setup.spec,
                              dtype=request.dtype, framework=request.framework, out=setup.out,
                              timeout_s=request.timeout_s)
    if request.framework != "reference":
        trainer.backend.procs.close()
    s = setup
    report(trainer, result, seconds=time.perf_counter() - t_start, out=s.out, as_json=request.as_json,
           facts=dict(spec=s.spec.name, schedule=s.sched.name, training=s.config.name, data=request.data_source,
                      seed=request.seed, dtype=request.dtype, train_images=len(s.train_data),
                      heldout_images=len(s.heldout)))


def _require_numba() -> None:
    """The oracle computes with Numba kernels; an install without them (effv2[torch], effv2[jax]) trains with
    its framework instead."""
    import importlib.util

    if importlib.util.find_spec("numba") is None:
        raise SpecInputError("--framework reference: the oracle needs numba, which is not installed "
                             "(pip install 'effv2[reference]'; or train with --framework torch or jax)")


def _run_rank(setup, replica, held: dict):
    """(trainer, result) of one process: its loop built, the header printed by rank 0, trained."""
    r = setup.request
    trainer = held["trainer"] = build_trainer(setup, replica, _auto_workers)
    lead = trainer.backend.rank == 0  # one process prints
    def echo(line: str) -> None:
        if lead:
            click.echo(line, err=r.as_json)

    if lead:
        echo(header(setup, trainer))
    if r.framework == "torch" and r.threads:
        import torch  # CPU intra-op threads; spare ones spin as badly as BLAS's

        torch.set_num_threads(r.threads)
    stream = sys.stderr if r.as_json else sys.stdout
    with _oracle_threads(r.threads if r.framework == "reference" else 1):
        result = (_run_with_progress(trainer, stream, echo, len(trainer.stages), r.stop_at) if lead
                  else trainer.run(stop_at=r.stop_at))
    return trainer, result


def _settle_process() -> None:
    """Before the first step: freed memory kept paged in, what exists now frozen for the collector, SIGTERM a stop."""
    from effv2_reference.kernels.runtime.heap import retain_freed_memory

    retain_freed_memory()  # every step frees and reallocates its activations: keep them paged in (runtime/heap.py)
    # What exists now (modules, Numba's loaded kernels and type tables, SciPy, the documents) lives until exit:
    # frozen, no collection traverses it again: not the full collections during training, not the one at
    # interpreter exit (0.6 s of a 2 s start-and-exit), and forked processes share its pages instead of
    # copying those the collector would touch
    gc.freeze()
    _stop_on_sigterm()


def _launch(world: int, run_rank, held: dict, *, spec, dtype: str, framework: str, out, timeout_s: float):
    """(trainer, result) of this process's rank, all `world` oracle processes started when there are several;
    what stops a run (a diverged loss, a dead peer or loader, an unwritable --out, Ctrl-C / SIGTERM) is one
    line. `held["trainer"]`: rank 0's trainer once built, for the step the run reached."""
    from effv2_train.data.errors import DataError
    from effv2_train.data.loader import LoaderError
    from effv2_train.trainloop import TrainingDiverged

    ReplicaError = _NotRaised
    try:
        if world > 1:  # oracle processes: numba, loaded by the oracle's runs alone
            from effv2_reference.replicas import ReplicaError, run_replicas
            from effv2_reference.train import replica_capacity

            return run_replicas(world, run_rank, capacity_bytes=replica_capacity(spec, dtype), timeout_s=timeout_s)
        return run_rank(None)
    except TrainingDiverged as exc:
        raise SpecInputError(f"{spec.name}: {exc}") from None
    except (DataError, LoaderError) as exc:  # an image that fails to decode mid-run (the index excluded what it
        # could not open), in this process or a loader's; or a loader process that died
        raise SpecInputError(f"{spec.name}: training stopped at step {_step(held)} ({exc}); "
                             f"{_kept(held, out)}") from None
    except ReplicaError as exc:  # another oracle process stopped, died or went silent
        step = held["trainer"].step if "trainer" in held else 0
        raise SpecInputError(f"{spec.name}: training stopped at step {step} ({exc})") from None
    except RuntimeError as exc:  # torch.distributed: a peer died or a collective timed out
        if framework == "reference":
            raise
        step = held["trainer"].step if "trainer" in held else 0
        raise SpecInputError(f"{spec.name}: training stopped at step {step} ({first_line(exc)}); "
                             "another process may have died") from None
    except OSError as exc:  # checkpoints and weights go to --out
        raise SpecInputError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})") from None
    except KeyboardInterrupt:
        trainer = held.get("trainer")
        step = trainer.step if trainer is not None else 0
        kept = (f"checkpoint at step {trainer.last_checkpoint_step} in {out}; continue with --resume"
                if trainer is not None and trainer.last_checkpoint_step is not None else "no checkpoint written yet")
        click.echo(f"interrupted at step {step}: {kept}", err=True)
        sys.exit(128 + _STOP_SIGNAL["number"])


class _NotRaised(Exception):
    """Stands in for the oracle's ReplicaError in a run that never imports replicas.py."""


def _step(held: dict) -> int:
    return held["trainer"].step if "trainer" in held else 0


def _kept(held: dict, out) -> str:
    trainer = held.get("trainer")
    if trainer is not None and trainer.last_checkpoint_step is not None:
        return f"the checkpoint at step {trainer.last_checkpoint_step} in {out} is kept; continue with --resume"
    return "no checkpoint was written yet"


_STOP_SIGNAL = {"number": 2}  # what interrupted the run: SIGINT unless SIGTERM arrives


def _stop_on_sigterm() -> None:
    """SIGTERM stops the run as Ctrl-C does (the loader's workers stop, the checkpoint is named); exit 143."""
    import signal
    import threading

    def handler(signum, frame):
        _STOP_SIGNAL["number"] = signum
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _parse_nproc(value) -> int | None:
    """--nproc: a count >= 1, or 'auto' (None: decided from the plan and this machine)."""
    text = str(value).strip()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if text.lower() == "auto":
        return None
    raise click.BadParameter(f"{value!r} is neither a count >= 1 nor 'auto'", param_hint="'--nproc'")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _auto_processes(plan) -> int:
    """--nproc auto: the most processes (up to one per core and AUTO_MAX_PROCESSES) whose shards hold
    AUTO_MIN_ROWS+ rows and fit the plan's BN and mix groups; one for short runs."""
    from effv2_train.plan import PlanError
    from effv2_train.recipe import batch_norm_layout

    if plan.total_steps < AUTO_WORKER_STEPS:
        return 1
    for p in range(min(_cores(), AUTO_MAX_PROCESSES), 1, -1):
        if plan.batch_size % p or plan.batch_size // p < AUTO_MIN_ROWS:
            continue
        try:
            plan.shards(p)
            batch_norm_layout(plan, p)
        except PlanError:
            continue
        return p
    return 1


def _parse_workers(value) -> int | None:
    """--workers: a count >= 0, or 'auto' (None: decided once the run's length is known)."""
    if isinstance(value, int) or str(value).strip().isdigit():
        return int(value)
    if str(value).strip().lower() == "auto":
        return None
    raise click.BadParameter(f"{value!r} is neither a count >= 0 nor 'auto'", param_hint="'--workers'")


def _auto_workers(steps_left: int, world: int) -> int:
    """One loader process when it can run beside the model: a single training process, a spare core, and
    enough steps to repay starting it (~1 s; it then takes about a tenth of the default run off the model's core)."""
    return int(world == 1 and (os.cpu_count() or 1) >= 2 and steps_left >= AUTO_WORKER_STEPS)


def _oracle_threads(n: int):
    """n > 1: the oracle's shared kernel pool (BLAS one thread per call inside it); else BLAS limited to n."""
    if n > 1:
        from effv2_reference.kernels.runtime.pool import set_num_threads

        set_num_threads(n)
        return _blas_threads(0)
    return _blas_threads(n)


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


def _run_with_progress(trainer, stream, echo, n_stages, stop_at=None):
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:  # rich is a dependency, but keep training usable without it
        return trainer.run(on_stage=lambda rec: echo(_stage_line(rec, n_stages)), stop_at=stop_at)
    console = Console(file=stream)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("training", total=trainer.total_steps, completed=trainer.step, loss="-")

        def on_step(step, total, loss):
            progress.update(task, completed=step, loss=f"{loss:.4f}")

        def on_stage(rec):
            progress.console.print(_stage_line(rec, n_stages), markup=False, highlight=False, soft_wrap=True)

        return trainer.run(on_step=on_step, on_stage=on_stage, stop_at=stop_at)
