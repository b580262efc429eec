"""What `effv2 train` does between the request and the launch: open the data and the output folder,
decide the oracle's process count, resolve `--framework` to a trainer, build each process's loop,
and print the run's header.

A framework other than the oracle is an adapter found through the registry (`effv2_adapters.registry`:
the built-in torch and jax, an installed package's `effv2.adapters` entry point, or a
"module:Class"), whose `trainer(**options)` capability gives the loop its backend: a third-party
adapter trains exactly as the built-in ones do. The oracle (`reference`) keeps its own trainer, whose
processes share memory (replicas.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .console import SpecInputError
from .frameworks import load_adapter
from .train_request import TrainRequest


@dataclass
class RunSetup:
    """A request made concrete: documents, data, starting weights, output folder, process count."""

    request: TrainRequest
    spec: Any
    sched: Any
    config: Any
    train_data: Any
    heldout: Any
    initial: Any
    out: Any
    world: int


def adapter_for(framework: str):
    """The registry's adapter for a framework name (not 'reference'), found and checked as `effv2 check` finds
    it; an adapter that cannot run here or cannot train is one line."""
    adapter = load_adapter(framework)
    if not callable(getattr(adapter, "trainer", None)):
        raise SpecInputError(f"--framework {framework}: its adapter has no `trainer` capability (it can be "
                             "checked, not trained)")
    return adapter


def framework_backend(adapter, framework: str, **options):
    """(processes, make_backend) of an adapter's trainer; a run it cannot start is one line."""
    try:
        make, procs = adapter.trainer(**options)
    except ValueError as exc:  # the adapter's refusal (device, process layout, precision)
        raise SpecInputError(str(exc)) from None
    except RuntimeError as exc:  # a rendezvous that never completes, a dead peer
        raise SpecInputError(f"--framework {framework}: cannot start the process group ({first_line(exc)})") from None

    def make_backend(plan, tensors):
        try:
            return make(plan, tensors)
        except ValueError as exc:
            raise SpecInputError(str(exc)) from None

    return procs, make_backend


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def prepare_run(request: TrainRequest, documents: tuple, *, cores: int, auto_processes) -> RunSetup:
    """Data, --init-from, the locked output folder and the oracle's process count, for the documents."""
    from effv2_train.checkpoint import CheckpointError, prepare_out_dir
    from effv2_train.data.sources import DataError, open_split

    from effv2_spec.accounting import ResourceError, check_training_fits

    from .train_request import load_initial, oracle_world

    r = request
    spec, sched, config = documents
    try:
        if r.framework == "reference":  # one process holds the whole batch in this machine's memory
            check_training_fits(spec, sched.image_size.end, config.batch_size, r.dtype)
        digits_size = max(sched.image_size.end, spec.input.eval_image_size)
        train_data, heldout = open_split(r.data_source, r.val_data, num_classes=spec.num_classes,
                                         channels=spec.input.channels, digits_size=digits_size)
    except (DataError, ResourceError) as exc:
        raise SpecInputError(str(exc)) from None
    initial = load_initial(r.init_from, spec, new_classifier=r.num_classes is not None)
    try:
        out = prepare_out_dir(r.out_dir, spec.name, resume=r.resume, overwrite=r.overwrite,
                              lock=r.writer_rank() == 0)
    except CheckpointError as exc:
        raise SpecInputError(str(exc)) from None
    world = (oracle_world(spec, sched, config, len(train_data), r.seed, r.nproc, cores=cores,
                          auto_processes=auto_processes) if r.framework == "reference" else 1)
    return RunSetup(r, spec, sched, config, train_data, heldout, initial, out, world)


def build_trainer(setup: RunSetup, replica, auto_workers):
    """This process's loop: the oracle's (its shard with a replica) or an adapter's; resumed when asked."""
    from effv2_train.checkpoint import CheckpointError
    from effv2_train.trainloop import ProgressiveLoop

    r, s = setup.request, setup
    common = dict(seed=r.seed, dtype=r.dtype, out_dir=s.out, checkpoint_every=r.checkpoint_every or None,
                  workers=r.workers or 0, init_from=s.initial, eval_size=r.eval_size, log_every=r.log_every,
                  tensorboard=r.tensorboard, eval_every=r.eval_every)
    try:
        if r.framework == "reference":
            from effv2_reference.train import Trainer  # numba: only the oracle's runs load it

            trainer = Trainer(s.spec, s.sched, s.config, s.train_data, s.heldout, replica=replica, **common)
        else:
            _, make_backend = framework_backend(adapter_for(r.framework), r.framework, **r.framework_options())
            trainer = ProgressiveLoop(s.spec, s.sched, s.config, s.train_data, s.heldout, make_backend, **common)
        if r.resume:
            trainer.resume()
    except CheckpointError as exc:
        raise SpecInputError(str(exc)) from None
    except ValueError as exc:  # a schedule the data cannot fill, an unsupported regulariser, groups vs data
        msg = str(exc).removeprefix("schedule: ")
        schedule_problem = msg != str(exc) or msg.startswith("regularizers.")
        raise SpecInputError(f"{r.schedule_source}: {msg}" if schedule_problem else msg) from None
    if r.workers is None:
        trainer.workers = auto_workers(trainer.total_steps - trainer.step, trainer.backend.world)
    return trainer


def header(setup: RunSetup, trainer) -> str:
    """The run's first line: what trains on what, validated on what, how."""
    r, s = setup.request, setup
    validation = "held-out" if s.heldout.name.endswith(":heldout") else f"validation from {s.heldout.name}"
    return (f"training {s.spec.name} on {r.data_source} ({len(s.train_data)} train / {len(s.heldout)} {validation}): "
            f"{s.sched.name} ({len(trainer.stages)} stages, {trainer.total_steps} steps), {s.config.name} "
            f"(batch {trainer.batch}), seed {r.seed}, {r.dtype}, {r.framework}"
            + (f" x {trainer.backend.world} processes" if trainer.backend.world > 1 else "")
            + "".join(f", {d.excluded} unreadable file(s) of {d.root} excluded (effv2 data index {d.root})"
                      for d in (s.train_data, s.heldout) if getattr(d, "excluded", 0))
            + (f", from {r.init_from}" if r.init_from and not r.resume else "")  # a resume continues its own
            + (", frozen BN" if s.config.batch_norm.mode == "frozen" else "")
            + (f", resumed at step {trainer.step}" if r.resume else ""))
