"""`effv2 data index | pack | show`: look at a data set before training on it (docs/data.md).

`index SOURCE` counts classes, image sizes and modes and lists the files that cannot be read;
`pack FOLDER -o DIR` writes a folder tree as Parquet shards (resumable); `show SOURCE -o sheet.png`
draws augmented training samples of one stage as the trainer sees them. Bad input is one line and
exit 1; outputs are written atomically and never over an existing result without --overwrite.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from effv2_train.data.summary import summarise

from .console import SpecInputError, cannot_write, display_name, echo_json, printable


@click.group()
def data():
    """Index, pack and look at training data (image folders, Parquet shards)."""


def _fail(exc: Exception) -> SpecInputError:
    return SpecInputError(str(exc))


# ---------------------------------------------------------------- index


def _print_summary(summary: dict) -> None:
    for s in summary["splits"]:
        counts = [c["count"] for c in s["classes"]]
        click.echo(printable(f"{s['split']}: {s['source']}: {s['images']} images in {len(counts)} classes "
                             f"(per class {min(counts)} to {max(counts)})"))
        shown = s["classes"] if len(counts) <= 20 else []
        for c in shown:
            click.echo(printable(f"  {c['name']}: {c['count']}"))
        if s["images"]:
            h, w = s["height"], s["width"]
            click.echo(f"  height min/median/max: {h['min']} / {h['median']:g} / {h['max']} px; "
                       f"width: {w['min']} / {w['median']:g} / {w['max']} px")
        click.echo("  modes: " + ", ".join(f"{m} {n}" for m, n in s["modes"].items())
                   + "; formats: " + ", ".join(f"{m} {n}" for m, n in s["formats"].items()))
        click.echo(f"  excluded (unreadable): {len(s['excluded'])}")
        for e in s["excluded"]:
            click.echo(printable(f"    {e['path']}: {e['reason']}"))
        if "damaged" in s:
            click.echo(f"  damaged (the header reads, the pixels do not decode; training would stop): "
                       f"{len(s['damaged'])}")
            for e in s["damaged"]:
                click.echo(printable(f"    {e['path']}: {e['reason']}"))
        click.echo(f"  index time: {s['seconds']:.2f} s{' (cached)' if s['cached'] else ''}")


@data.command()
@click.argument("source")
@click.option("--refresh", is_flag=True, help="Read every file's header again instead of using the cached index.")
@click.option("--verify", is_flag=True,
              help="Also decode every image and list those whose pixel data is damaged (exit 1 if any); slow.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def index(source, refresh, verify, as_json):
    """Class counts, image sizes, modes and unreadable files of SOURCE (an image folder, ROOT/train + ROOT/val,
    or Parquet shards)."""
    from effv2_train.data.errors import DataError

    try:
        summary = summarise(source, refresh, verify)
    except DataError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise SpecInputError(f"{exc.filename or display_name(source)}: cannot read ({exc.strerror or exc})") from None
    if as_json:
        echo_json(summary)
    else:
        _print_summary(summary)
    if any(s.get("damaged") for s in summary["splits"]):
        raise SystemExit(1)


# ---------------------------------------------------------------- pack


@data.command()
@click.argument("folder")
@click.option("-o", "--out", required=True, help="Folder of the shards (created; an unfinished pack is resumed).")
@click.option("--format", "fmt", type=click.Choice(["parquet"]), default="parquet", show_default=True,
              help="Shard format (the Hugging Face image-classification layout).")
@click.option("--shard-size", type=click.IntRange(min=1), default=2048, show_default=True, help="Rows per shard.")
@click.option("--overwrite", is_flag=True, help="Replace the shards of another pack in --out.")
def pack(folder, out, fmt, shard_size, overwrite):
    """Write the image folder FOLDER (ROOT/<class>/... or ROOT/train + ROOT/val) as Parquet shards in OUT."""
    from effv2_train.data.errors import DataError
    from effv2_train.data.pack import pack_folder

    try:
        result = pack_folder(folder, out, shard_size=shard_size, overwrite=overwrite,
                             progress=lambda line: click.echo(printable(f"wrote {line}"), err=True))
    except DataError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise cannot_write(exc.filename or out, exc) from None
    for s in result.splits:
        click.echo(printable(f"{s.split}: {s.images} images in {s.shards} shard(s) ({s.written} written, "
                             f"{s.kept} kept from an earlier run), {s.excluded} unreadable file(s) skipped"))
    click.echo(printable(f"{result.out}: {sum(s.bytes_written for s in result.splits) / 1e6:.1f} MB written in "
                         f"{result.seconds:.1f} s"))


# ---------------------------------------------------------------- show


@data.command()
@click.argument("source")
@click.option("--spec", "spec_source", default=None, help="Architecture (file or preset) [default: effv2 train's].")
@click.option("--schedule", "schedule_source", default=None, help="Progressive schedule [default: effv2 train's].")
@click.option("--training", "training_source", default=None, help="Training recipe [default: effv2 train's].")
@click.option("--stage", type=click.IntRange(min=0), default=None,
              help="Stage index as `effv2 schedule` numbers them [default: the last stage].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="The run's seed.")
@click.option("-n", "count", type=click.IntRange(min=1, max=1024), default=16, show_default=True,
              help="Number of samples.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The PNG to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
def show(source, spec_source, schedule_source, training_source, stage, seed, count, output, overwrite):
    """A contact sheet of SOURCE's augmented training samples at one stage, as `effv2 train` would feed them."""
    if Path(output).exists() and not overwrite:
        raise SpecInputError(f"{display_name(output)}: already exists; pass --overwrite to replace it")
    from effv2_spec.documents import load_architecture, load_schedule, load_training

    from .console import load_or_fail
    from .train import DEFAULT_SCHEDULE, DEFAULT_SPEC, DEFAULT_TRAINING

    spec = load_or_fail(load_architecture, spec_source or DEFAULT_SPEC)
    sched = load_or_fail(load_schedule, schedule_source or DEFAULT_SCHEDULE)
    config = load_or_fail(load_training, training_source or DEFAULT_TRAINING)
    train, spec = _training_rows(source, spec, sched)
    from effv2_train.data.contact_sheet import draw_sheet, sample_images

    try:
        last = len(_stages(spec, sched, config, train, seed)) - 1
        k = last if stage is None else stage
        if k > last:
            raise click.BadParameter(f"{stage}: the schedule has stages 0 to {last} here", param_hint="'--stage'")
        images, captions, st, _ = sample_images(train, spec, sched, config, stage=k, seed=seed, n=count)
    except ValueError as exc:  # DataError (a file that fails to decode), PlanError (data vs schedule)
        raise SpecInputError(str(exc)) from None
    mag = st.regularizers.get("randaugment_magnitude", 0)
    extras = ", ".join(f"{name} {value:g}" for name, value in st.regularizers.items()
                       if name in ("mixup_alpha", "cutmix_alpha") and value)
    title = [f"{source}: {sched.name} stage {k}, {st.image_size} px, steps {st.start_step}-{st.end_step}",
             f"{config.name}: RandAugment {config.randaugment_layers} x {mag:g}{', ' + extras if extras else ''}, "
             f"seed {seed}, {spec.name}"]
    png = draw_sheet(images, captions, title)
    from effv2_spec.weights import atomic_write_bytes

    try:
        atomic_write_bytes(output, png)
    except OSError as exc:
        raise cannot_write(output, exc) from None
    click.echo(printable(f"{output}: {len(images)} samples of stage {k} ({st.image_size} px)"))


def _training_rows(source: str, spec, sched):
    """The training split of SOURCE as `effv2 train` opens it, and the spec with room for its classes
    (a contact sheet trains nothing: the spec's classifier size must not stop it)."""
    from effv2_train.data.errors import DataError
    from effv2_train.data.sources import open_split

    from effv2_spec.documents import parse_obj

    wide = 1_000_000
    try:
        train, _ = open_split(source, None, num_classes=wide, channels=spec.input.channels,
                              digits_size=max(sched.image_size.end, spec.input.eval_image_size))
    except DataError as exc:
        raise _fail(exc) from None
    classes = max(len(getattr(train, "classes", []) or []), int(np.max(train.labels)) + 1)
    if classes > spec.num_classes:
        spec = parse_obj({**spec.model_dump(mode="json"), "num_classes": classes})
    train.num_classes = spec.num_classes
    return train, spec


def _stages(spec, sched, config, train, seed):
    from effv2_train.plan import TrainingPlan

    return TrainingPlan(spec, sched, config, len(train), seed=seed).stages
