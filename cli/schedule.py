"""`effv2 schedule SCHEDULE [--json] [--plot PNG]`: the per-stage table of Algorithm 1."""

from __future__ import annotations

import click

from effv2_spec.documents import load_schedule

from .console import SpecInputError, cannot_write, echo_json, load_or_fail, print_table


@click.command()
@click.argument("schedule_source", metavar="SCHEDULE")
@click.option("--steps-per-epoch", type=click.FloatRange(min=1), default=None,
              help="Needed when the schedule gives total_epochs instead of total_steps (>= 1).")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of stages (image_size, steps, each regularizer).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write a PNG plot.")
def schedule(schedule_source: str, steps_per_epoch: float | None, as_json: bool, plot_path: str | None) -> None:
    """Per-stage image size, step range and regularisation of SCHEDULE (a file or preset name)."""
    sched = load_or_fail(load_schedule, schedule_source)
    try:
        stages = sched.stages(steps_per_epoch)
    except ValueError as exc:
        raise SpecInputError(f"{schedule_source}: {exc}") from None
    flat = [{"stage": s.index, "image_size": s.image_size, "start_step": s.start_step, "end_step": s.end_step,
             "steps": s.steps, **s.regularizers} for s in stages]
    if plot_path:
        _plot(sched, flat, plot_path)
    if as_json:
        echo_json({"name": sched.name, "convention": sched.convention,
                   "total_steps": sum(s.steps for s in stages), "stages": flat})
        return
    names = list(sched.regularizers)
    rows = [[r["stage"], r["image_size"], f"{r['start_step']}-{r['end_step']}", r["steps"],
             *(f"{r[n]:.4g}" for n in names)] for r in flat]
    print_table(f"{sched.name} ({sched.convention})", ["stage", "image size", "steps range", "steps", *names], rows)


def _plot(sched, flat, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpecInputError("--plot needs matplotlib: pip install 'effv2[plot]'") from None
    import io

    from effv2_spec.weights import atomic_write_bytes

    names = list(sched.regularizers)
    fig, axes = plt.subplots(1 + len(names), 1, figsize=(6, 2 + 1.6 * len(names)), sharex=True, squeeze=False)
    edges = [r["start_step"] for r in flat] + [flat[-1]["end_step"]]
    for ax, key in zip(axes[:, 0], ["image_size", *names]):
        ax.stairs([r[key] for r in flat], edges, linewidth=2)
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"{sched.name} ({sched.convention}, {len(flat)} stages)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise cannot_write(path, exc) from None
