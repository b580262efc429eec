"""`effv2 data index | pack | show`: look at a data set before training on it (docs/data.md).

`index SOURCE` counts classes, image sizes and modes and lists the files that cannot be read;
`pack FOLDER -o DIR` writes a folder tree as Parquet shards (resumable); `show SOURCE -o sheet.png`
draws augmented training samples of one stage as the trainer sees them. Bad input is one line and
exit 1; outputs are written atomically and never over an existing result without --overwrite.
"""

from __future__ import annotations

import time

import numpy as np
from pathlib import Path

import click

from effv2_spec.console import SpecInputError, cannot_write, display_name, echo_json, printable


@click.group()
def data():
    """Index, pack and look at training data (image folders, Parquet shards)."""


def _fail(exc: Exception) -> SpecInputError:
    return SpecInputError(str(exc))


# ---------------------------------------------------------------- index


def _stats(values) -> dict:
    import numpy as np

    v = np.asarray(values)
    if v.size == 0:
        return {"min": None, "median": None, "max": None}
    return {"min": int(v.min()), "median": float(np.median(v)), "max": int(v.max())}


def _split_summary(split: str, where: str, classes: list[str], labels, heights, widths, modes: dict,
                   formats: dict, excluded: list, seconds: float, cached: bool) -> dict:
    import numpy as np

    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    return {"split": split, "source": where, "images": int(counts.sum()),
            "classes": [{"name": c, "count": int(n)} for c, n in zip(classes, counts.tolist())],
            "height": _stats(heights), "width": _stats(widths), "modes": modes, "formats": formats,
            "excluded": [{"path": p, "reason": r} for p, r in excluded], "seconds": round(seconds, 3),
            "cached": cached}


def _folder_summaries(root: Path, refresh: bool, verify: bool) -> list[dict]:
    from .data.folder_index import build_index
    from .data.pack import split_folders

    out = []
    for split, path in split_folders(root).items():
        ix = build_index(path, refresh=refresh)
        out.append(_split_summary(split, ix.root, list(ix.classes), ix.labels, ix.heights, ix.widths, ix.modes,
                                  ix.formats, ix.excluded, ix.seconds, ix.cached))
        if verify:
            out[-1]["damaged"] = _damaged_files(ix)
    return out


def _decode_problem(path: str) -> str | None:
    """None when the whole image decodes, else why not (one line)."""
    from .data.folder_index import PILLOW_ERRORS
    from .preprocess import ImageError, open_raster

    try:
        with open_raster(path) as im:
            im.load()
    except ImageError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except PILLOW_ERRORS as exc:
        return _reason(exc)
    return None


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _damaged_files(ix) -> list[dict]:
    """Indexed files whose pixel data fails to decode (the index reads headers only), decoded in threads:
    Pillow's decoders release the GIL."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        problems = list(pool.map(_decode_problem, ix.paths, chunksize=64))
    return [{"path": p, "reason": r} for p, r in zip(ix.paths, problems) if r is not None]


def _shard_groups(source: str) -> dict[str, list[str]]:
    """Shards of SOURCE (a folder of .parquet files, one file or a glob) grouped by split name prefix."""
    import glob

    p = Path(source)
    files = sorted(glob.glob(source)) if glob.has_magic(source) else (
        sorted(str(f) for f in p.glob("*.parquet")) if p.is_dir() else [source])
    groups: dict[str, list[str]] = {}
    for f in files:
        name = Path(f).name
        split = next((s for s in ("train", "validation", "val", "test") if name.startswith(f"{s}-")), "all")
        groups.setdefault("validation" if split == "val" else split, []).append(f)
    return groups


def _shard_summary(split: str, shards: list[str], verify: bool) -> dict:
    """Headers of every image in `shards`: each row group is read, each image's header opened from its bytes."""
    import json

    from .data.errors import DataError

    pq = _pyarrow()
    start = time.perf_counter()
    found = {"labels": [], "heights": [], "widths": [], "modes": {}, "formats": {}, "excluded": [], "damaged": []}
    names = None
    for shard in shards:
        row = 0
        try:
            f = pq.ParquetFile(shard)
            meta = json.loads((f.schema_arrow.metadata or {}).get(b"huggingface", b"{}"))
            names = names or meta.get("info", {}).get("features", {}).get("label", {}).get("names")
            for g in range(f.num_row_groups):  # one row group in memory at a time
                row = _scan_rows(f.read_row_group(g, columns=["image", "label"]), shard, row, found, verify)
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise DataError(f"{shard}: not a readable Parquet shard with image and label columns "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not names:
        names = [str(k) for k in range(max(found["labels"], default=-1) + 1)]
    where = shards[0] if len(shards) == 1 else f"{Path(shards[0]).parent}/{split}-*.parquet ({len(shards)} shards)"
    summary = _split_summary(split, where, list(names), found["labels"], found["heights"], found["widths"],
                             dict(sorted(found["modes"].items())), dict(sorted(found["formats"].items())),
                             found["excluded"], time.perf_counter() - start, False)
    if verify:
        summary["damaged"] = found["damaged"]
    return summary


def _scan_rows(table, shard: str, row: int, found: dict, verify: bool) -> int:
    """Add the headers of one row group's images to `found` (and, with `verify`, the rows whose pixel data fails
    to decode); returns the next row number of the shard."""
    import io

    from PIL import Image

    from .data.folder_index import PILLOW_ERRORS
    from .preprocess import RASTER_FORMATS

    for image, label in zip(table.column("image").to_pylist(), table.column("label").to_pylist()):
        try:
            with Image.open(io.BytesIO((image or {}).get("bytes") or b""), formats=RASTER_FORMATS) as im:
                (w, h), mode, fmt = im.size, im.mode, str(im.format)
                if verify:
                    try:
                        im.load()
                    except PILLOW_ERRORS as exc:
                        found["damaged"].append({"path": f"{shard}#{row}", "reason": _reason(exc)})
        except PILLOW_ERRORS as exc:
            found["excluded"].append((f"{shard}#{row}", f"not an image Pillow can read ({type(exc).__name__})"))
        else:
            found["labels"].append(int(label))
            found["heights"].append(h)
            found["widths"].append(w)
            found["modes"][mode] = found["modes"].get(mode, 0) + 1
            found["formats"][fmt] = found["formats"].get(fmt, 0) + 1
        row += 1
    return row


def _pyarrow():
    from .data.errors import DataError

    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("needs pyarrow (pip install 'effv2[data]')") from None
    return pq


def summarise(source: str, refresh: bool = False, verify: bool = False) -> dict:
    """What `effv2 data index` prints, as data."""
    import glob

    from .data.errors import DataError

    p = Path(source)
    if source == "":
        raise DataError("'': an empty path names no file or folder")
    parquet = glob.has_magic(source) or source.endswith(".parquet") or (
        p.is_dir() and any(f.suffix == ".parquet" for f in p.iterdir() if f.is_file()))
    if parquet:
        groups = _shard_groups(source)
        if not groups:
            raise DataError(f"{source}: no Parquet shards match")
        return {"source": source, "kind": "parquet",
                "splits": [_shard_summary(split, files, verify) for split, files in groups.items()]}
    if not p.exists():
        raise DataError(f"{source}: no such file or folder")
    if not p.is_dir():
        raise DataError(f"{source}: not a folder or Parquet shards; give an image folder ROOT/<class>/..., "
                        f"ROOT/train + ROOT/val, or .parquet shards")
    return {"source": source, "kind": "folder", "splits": _folder_summaries(p, refresh, verify)}


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
    from .data.errors import DataError

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
    from .data.errors import DataError
    from .data.pack import pack_folder

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
    from effv2_spec.console import load_or_fail

    from .cli_train import DEFAULT_SCHEDULE, DEFAULT_SPEC, DEFAULT_TRAINING

    spec = load_or_fail(load_architecture, spec_source or DEFAULT_SPEC)
    sched = load_or_fail(load_schedule, schedule_source or DEFAULT_SCHEDULE)
    config = load_or_fail(load_training, training_source or DEFAULT_TRAINING)
    train, spec = _training_rows(source, spec, sched)
    from .data.contact_sheet import draw_sheet, sample_images

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
    from effv2_spec.documents import parse_obj

    from .data.errors import DataError
    from .data.sources import open_split

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
    from .plan import TrainingPlan

    return TrainingPlan(spec, sched, config, len(train), seed=seed).stages
