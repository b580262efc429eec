"""`effv2 train [SPEC] [--schedule S] [--training T] [--data ...] [--out DIR] [--resume] [--seed N] [--json]`.

With no arguments: efficientnetv2-nano on the embedded digits, progressive schedule
progressive-efficientnetv2-nano-paper, recipe training-cpu. Progress bar and one line per
stage go to stdout, or to stderr with --json so stdout holds exactly one JSON object.
Bad input (documents, data, a checkpoint from another run) is one line and exit 1.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import time

import click

from effv2_spec.console import SpecInputError, load_or_fail
from effv2_spec.documents import load_architecture, load_schedule, load_training, parse_obj
from effv2_spec.errors import SpecError

DEFAULT_SPEC = "efficientnetv2-nano"
DEFAULT_SCHEDULE = "progressive-efficientnetv2-nano-paper"
DEFAULT_TRAINING = "training-cpu"
AUTO_WORKER_STEPS = 500  # --workers / --nproc auto: runs shorter than this stay in one process
AUTO_MAX_PROCESSES = 4  # --nproc auto: at most this many oracle processes,
AUTO_MIN_ROWS = 16  # each with at least this many rows of the batch (fewer waste the fixed cost of a step)


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


#: framework trainers, looked up by name like plug-ins (effv2_adapters builds on effv2_reference, not back):
#: module, factory, the pip extra, the third-party modules it needs
FRAMEWORK_TRAINERS = {"torch": ("effv2_adapters.torch.train", "make_torch_backend", "torch", ("torch",)),
                      "jax": ("effv2_adapters.jax.train", "make_jax_backend", "jax",
                              ("jax", "jaxlib", "flax", "optax"))}


def _framework_backend(framework: str, **options):
    """(process layout, make_backend) of a framework trainer; one line when it cannot start.

    The factory takes the command's options and returns (make_backend(plan, tensors), processes);
    its module's `TrainSetupError` is a refusal to report in one line.
    """
    module_name, attr, extra, needs = FRAMEWORK_TRAINERS[framework]
    try:
        module = importlib.import_module(module_name)
        for name in needs[1:]:
            importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in needs:
            raise SpecInputError(f"--framework {framework}: {exc.name} is not installed "
                                 f"(pip install 'effv2[{extra}]')") from None
        raise
    try:
        make, procs = getattr(module, attr)(**options)
    except module.TrainSetupError as exc:
        raise SpecInputError(str(exc)) from None
    except RuntimeError as exc:  # a rendezvous that never completes, a dead peer
        raise SpecInputError(f"--framework {framework}: cannot start the process group ({_first_line(exc)})") from None

    def make_backend(plan, tensors):
        try:
            return make(plan, tensors)
        except module.TrainSetupError as exc:
            raise SpecInputError(str(exc)) from None

    return procs, make_backend


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
              help="Folder for checkpoint.npz, weights.safetensors and the record metrics.jsonl [default: runs/<spec name>].")
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
              help="Processes preparing each step's images (crop, flip, RandAugment) one step ahead; 0: in this "
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
@click.option("--framework", type=click.Choice(["reference", "torch", "jax"]), default="reference", show_default=True,
              help="Who computes the steps: the NumPy oracle, PyTorch (also under torchrun, one process per "
                   "device), or JAX (every local device; several hosts with --coordinator). Same plan, same result.")
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
def train(spec_source, schedule_source, training_source, data_source, out_dir, resume, overwrite, seed, steps, epochs, dtype,
          checkpoint_every, threads, workers, nproc, init_from, num_classes, frozen_bn, eval_size, stop_at, framework, device, precision,
          channels_last, compile_, timeout_s, coordinator, num_processes, process_id, as_json, log_every=10,
          tensorboard=False, eval_every=0):
    """Train SPEC progressively: with the NumPy/Numba oracle on CPU, with PyTorch (torchrun for many devices) or
    with JAX (every local device; --coordinator for several processes / hosts)."""
    t_start = time.perf_counter()
    if steps is not None and epochs is not None:
        raise click.UsageError("give at most one of --steps and --epochs")
    if resume and overwrite:
        raise click.UsageError("give at most one of --resume and --overwrite")
    spec = load_or_fail(load_architecture, spec_source)
    sched = _override_length(load_or_fail(load_schedule, schedule_source), schedule_source, steps, epochs)
    config = load_or_fail(load_training, training_source)
    if num_classes is not None:
        spec = _with_changes(spec, spec_source, "--num-classes", num_classes=num_classes)
    if frozen_bn:
        config = _with_changes(config, training_source, "--frozen-bn",
                               batch_norm=dict(config.batch_norm.model_dump(mode="json"), mode="frozen"))
    if eval_size is not None and eval_size < spec.total_stride:
        raise click.BadParameter(f"must be >= the network's total stride {spec.total_stride} (got {eval_size})",
                                 param_hint="'--eval-size'")

    # imported here: numba and the oracle load only once the documents are known to be good
    from effv2_spec.accounting import ResourceError, check_training_fits

    from .checkpoint import CheckpointError, prepare_out_dir
    from .data.sources import DataError, load_source, split
    from .train import Trainer
    from .trainloop import ProgressiveLoop

    from .train_request import check_framework_options, load_initial, oracle_world, report

    check_framework_options(framework, nproc=nproc, workers=workers, cores=_cores(), device=device,
                            precision=precision, channels_last=channels_last, compile_=compile_,
                            coordinator=coordinator, num_processes=num_processes, process_id=process_id)
    if framework == "jax":  # several processes: a dead peer aborts the survivors in C++; a child takes that
        supervise = importlib.import_module("effv2_adapters.jax.supervise")
        if supervise.wanted(coordinator):
            sys.exit(supervise.run(out_dir, spec.name, process_id, num_processes))

    try:
        if framework == "reference":  # one process holds the whole batch in this machine's memory
            check_training_fits(spec, sched.image_size.end, config.batch_size, dtype)
        store_size = max(sched.image_size.end, spec.input.eval_image_size)
        data = load_source(data_source, spec.num_classes, spec.input.channels, store_size)
        train_data, heldout = split(data)
    except (DataError, ResourceError) as exc:
        raise SpecInputError(str(exc)) from None
    initial = load_initial(init_from, spec, new_classifier=num_classes is not None)
    try:
        out = prepare_out_dir(out_dir, spec.name, resume=resume, overwrite=overwrite,
                              lock=_writer_rank(framework, process_id) == 0)
    except CheckpointError as exc:
        raise SpecInputError(str(exc)) from None
    world = (oracle_world(spec, sched, config, len(train_data), seed, nproc, cores=_cores(),
                          auto_processes=_auto_processes) if framework == "reference" else 1)

    def build(replica):
        """This process's loop: the oracle's (its shard with a replica) or a framework's."""
        try:
            if framework == "reference":
                trainer = Trainer(spec, sched, config, train_data, heldout, seed=seed, dtype=dtype, out_dir=out,
                                  checkpoint_every=checkpoint_every or None, workers=workers or 0,
                                  init_from=initial, eval_size=eval_size, replica=replica, log_every=log_every,
                                  tensorboard=tensorboard, eval_every=eval_every)
            else:
                options = dict(dtype=dtype, device=device, precision=precision, timeout_s=timeout_s)
                if framework == "jax":
                    options.update(coordinator=coordinator, num_processes=num_processes, process_id=process_id)
                else:
                    options.update(channels_last=channels_last, compile=compile_)
                procs, make_backend = _framework_backend(framework, **options)
                trainer = ProgressiveLoop(spec, sched, config, train_data, heldout, make_backend, seed=seed,
                                          dtype=dtype, out_dir=out, checkpoint_every=checkpoint_every or None,
                                          workers=workers or 0, init_from=initial, eval_size=eval_size,
                                          log_every=log_every, tensorboard=tensorboard, eval_every=eval_every)
            if resume:
                trainer.resume()
        except CheckpointError as exc:
            raise SpecInputError(str(exc)) from None
        except ValueError as exc:  # a schedule the data cannot fill, an unsupported regulariser, groups vs data
            msg = str(exc).removeprefix("schedule: ")
            schedule_problem = msg != str(exc) or msg.startswith("regularizers.")
            raise SpecInputError(f"{schedule_source}: {msg}" if schedule_problem else msg) from None
        if workers is None:
            trainer.workers = _auto_workers(trainer.total_steps - trainer.step, trainer.backend.world)
        return trainer

    stream = sys.stderr if as_json else sys.stdout
    held: dict = {}  # rank 0's trainer, for the messages after an interruption

    def run_rank(replica):
        trainer = held["trainer"] = build(replica)
        lead = trainer.backend.rank == 0  # one process prints
        echo = (lambda s: click.echo(s, err=as_json) if lead else None)
        n_stages = len(trainer.stages)
        if lead:
            echo(f"training {spec.name} on {data.name} ({len(train_data)} train / {len(heldout)} held-out, "
                 f"{train_data.images.shape[1]} px stored): {sched.name} ({n_stages} stages, {trainer.total_steps} "
                 f"steps), {config.name} (batch {trainer.batch}), seed {seed}, {dtype}, {framework}"
                 + (f" x {trainer.backend.world} processes" if trainer.backend.world > 1 else "")
                 + (f", from {init_from}" if init_from and not resume else "")  # a resume continues its own
                 + (", frozen BN" if config.batch_norm.mode == "frozen" else "")
                 + (f", resumed at step {trainer.step}" if resume else ""))
        if framework == "torch" and threads:
            import torch  # CPU intra-op threads; spare ones spin as badly as BLAS's

            torch.set_num_threads(threads)
        with _oracle_threads(threads if framework == "reference" else 1):
            result = (_run_with_progress(trainer, stream, echo, n_stages, stop_at) if lead
                      else trainer.run(stop_at=stop_at))
        return trainer, result

    from .kernels.heap import retain_freed_memory

    retain_freed_memory()  # every step frees and reallocates its activations: keep them paged in (kernels/heap.py)
    # What exists now (modules, Numba's loaded kernels and type tables, SciPy, the documents) lives until exit:
    # frozen, no collection traverses it again: not the full collections during training, not the one at
    # interpreter exit (0.6 s of a 2 s start-and-exit), and forked processes share its pages instead of
    # copying those the collector would touch
    gc.freeze()
    _stop_on_sigterm()
    trainer, result = _launch(world, run_rank, held, spec=spec, dtype=dtype, framework=framework, out=out,
                              timeout_s=timeout_s)
    if framework != "reference":
        trainer.backend.procs.close()
    report(trainer, result, seconds=time.perf_counter() - t_start, out=out, as_json=as_json,
           facts=dict(spec=spec.name, schedule=sched.name, training=config.name, data=data.name, seed=seed,
                      dtype=dtype, train_images=len(train_data), heldout_images=len(heldout)))


def _launch(world: int, run_rank, held: dict, *, spec, dtype: str, framework: str, out, timeout_s: float):
    """(trainer, result) of this process's rank, all `world` oracle processes started when there are several;
    what stops a run (a diverged loss, a dead peer or loader, an unwritable --out, Ctrl-C / SIGTERM) is one
    line. `held["trainer"]`: rank 0's trainer once built, for the step the run reached."""
    from .data.loader import LoaderError
    from .replicas import ReplicaError, run_replicas
    from .train import TrainingDiverged, replica_capacity

    try:
        if world > 1:
            return run_replicas(world, run_rank, capacity_bytes=replica_capacity(spec, dtype), timeout_s=timeout_s)
        return run_rank(None)
    except TrainingDiverged as exc:
        raise SpecInputError(f"{spec.name}: {exc}") from None
    except ReplicaError as exc:  # another oracle process stopped, died or went silent
        step = held["trainer"].step if "trainer" in held else 0
        raise SpecInputError(f"{spec.name}: training stopped at step {step} ({exc})") from None
    except RuntimeError as exc:  # torch.distributed: a peer died or a collective timed out
        if framework == "reference":
            raise
        step = held["trainer"].step if "trainer" in held else 0
        raise SpecInputError(f"{spec.name}: training stopped at step {step} ({_first_line(exc)}); "
                             "another process may have died") from None
    except LoaderError as exc:  # a data loader process failed or was killed
        raise SpecInputError(f"{spec.name}: training stopped ({exc})") from None
    except OSError as exc:  # checkpoints and weights go to --out
        raise SpecInputError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})") from None
    except KeyboardInterrupt:
        trainer = held.get("trainer")
        step = trainer.step if trainer is not None else 0
        kept = (f"checkpoint at step {trainer.last_checkpoint_step} in {out}; continue with --resume"
                if trainer is not None and trainer.last_checkpoint_step is not None else "no checkpoint written yet")
        click.echo(f"interrupted at step {step}: {kept}", err=True)
        sys.exit(128 + _STOP_SIGNAL["number"])


def _writer_rank(framework: str, process_id: int | None) -> int:
    """This process's rank among the run's processes on a shared --out (only rank 0 locks and writes it)."""
    if framework == "reference":
        return 0
    if framework == "jax" and process_id is not None:
        return process_id
    text = os.environ.get("JAX_PROCESS_ID" if framework == "jax" else "RANK", "0").strip()
    return int(text) if text.isdigit() else 0


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
    from .plan import PlanError
    from .train import batch_norm_layout

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
        from .kernels import set_num_threads

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
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.console import Console
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
