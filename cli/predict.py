"""`effv2 predict` and `effv2 eval`: canonical weights on images, in the oracle or any backend.

Both prepare images by the spec's evaluation transform (`input.eval_preprocessing` and
`input.normalization`; docs/evaluation.md) and run `effv2_adapters.predict.Classifier`.
Bad input is one line and exit 1: an unreadable image given to predict (refused, nothing
runs), a labels file of the wrong length, weights of another network, an empty or broken
data source. Inside an eval folder, unreadable files are named, skipped and counted.
Usage errors (unknown option or framework, missing argument) exit 2.
"""

from __future__ import annotations

import sys
import time

import click
import numpy as np
from effv2_adapters.predict import Classifier, check_compatible, frameworks, softmax, top_k

from effv2_spec.architecture import MAX_IMAGE_SIZE
from effv2_spec.documents import load_architecture
from effv2_spec.errors import SpecError
from effv2_spec.weights import WeightsError, load_weights

from .console import SpecInputError, echo_json, load_or_fail, printable, resolve_or_fail
from .frameworks import framework_name, load_adapter

_FRAMEWORK = click.option("--framework", "-f", default="reference", show_default=True, callback=framework_name,
                          help=f"Where the network runs: {', '.join(frameworks())}, an installed adapter "
                               "(entry point effv2.adapters) or package.module:Class.")
_DTYPE = click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
                      help="Computation dtype.")
_SIZE = click.option("--image-size", type=click.IntRange(min=1, max=MAX_IMAGE_SIZE), default=None,
                     help="Evaluation size S (default: the spec's input.eval_image_size).")
_WEIGHTS = click.option("--weights", "-w", required=True, help="Canonical safetensors (effv2 convert / train).")


def _classifier(arch, weights: str, framework: str, dtype: str, image_size: int | None):
    """(Classifier, size) or a one-line SpecInputError."""
    size = int(image_size if image_size is not None else arch.input.eval_image_size)
    resolve_or_fail(arch, size)  # refused before the weights are read
    adapter = None
    if framework != "reference":
        adapter = load_adapter(framework)
    try:
        file_spec, tensors = load_weights(weights)
        check_compatible(file_spec, arch, weights)
        return Classifier(arch, tensors, framework, dtype, size, adapter=adapter), size
    except (WeightsError, SpecError) as exc:
        raise SpecInputError(f"{weights}: {exc}" if not str(exc).startswith(str(weights)) else str(exc)) from None


def _run(classifier: Classifier, images: np.ndarray, framework: str) -> np.ndarray:
    """Logits of a uint8 NHWC batch; running out of memory (normalising included) is one line."""
    from effv2_train.preprocess import normalise

    try:
        return classifier.logits(normalise(images, classifier.spec, classifier.dtype))
    except (MemoryError, RuntimeError) as exc:  # out of memory, or the framework failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        raise SpecInputError(f"{framework} forward failed: {type(exc).__name__}: {first} "
                             "(a smaller --batch needs less memory)") from None


def _prepared(path: str, arch, size: int) -> np.ndarray:
    """uint8 HWC pixels of one image by the spec's evaluation transform; every failure is one line naming it."""
    from effv2_train.preprocess import ImageError, load_image, pixels

    if not str(path):
        raise SpecInputError("'': an empty path names no image")
    try:
        img = load_image(path, arch.input.channels)
        return pixels(img, size, arch.input.eval_preprocessing)
    except ImageError as exc:
        text = str(exc)
        raise SpecInputError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    except MemoryError:
        raise SpecInputError(f"{path}: not enough memory to prepare it at {size} px") from None


# ---- predict -------------------------------------------------------------------------------------------
@click.command()
@click.argument("spec")
@_WEIGHTS
@click.argument("images", nargs=-1, required=True)
@_FRAMEWORK
@click.option("--top", "k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Classes shown per image (at most num_classes).")
@click.option("--labels", "labels_file", default=None,
              help="Class names, one per line in class-index order (default: ImageNet-1k names for 1000 classes).")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Images per forward pass.")
@_DTYPE
@_SIZE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (logits included).")
def predict(spec, weights, images, framework, k, labels_file, batch, dtype, image_size, as_json):
    """Top-K classes with probabilities for each IMAGE (any file Pillow reads).

    Images are EXIF-rotated, converted to RGB and prepared by SPEC's evaluation transform.
    An unreadable IMAGE is refused (one line, exit 1) before anything runs.
    """
    from effv2_train.labels import LabelError, class_names

    arch = load_or_fail(load_architecture, spec)
    try:
        names = class_names(arch.num_classes, labels_file)
    except LabelError as exc:
        raise SpecInputError(str(exc)) from None
    size = int(image_size if image_size is not None else arch.input.eval_image_size)
    prepared = [_prepared(p, arch, size) for p in images]  # every image first: a bad one stops with nothing run
    classifier, size = _classifier(arch, weights, framework, dtype, image_size)
    logits = np.concatenate([_run(classifier, np.stack(prepared[i:i + batch]), framework)
                             for i in range(0, len(prepared), batch)])
    probs = softmax(logits)
    best = top_k(logits, k)
    results = []
    for path, row, p, z in zip(images, best, probs, logits):
        results.append({"image": str(path), "top": [
            {"class": int(c), "label": names[c] if names else None, "probability": float(p[c]), "logit": float(z[c])}
            for c in row]})
    if as_json:
        echo_json({"spec": arch.name, "framework": framework, "dtype": dtype, "image_size": size,
                   "preprocessing": arch.input.eval_preprocessing.model_dump(), "results": results})
        return
    for r in results:
        click.echo(printable(r["image"]))
        for rank, t in enumerate(r["top"], 1):
            label = f"  {printable(t['label'])}" if t["label"] else ""  # a --labels file may hold escapes
            click.echo(f"  {rank:>3}  {t['probability']:8.4f}  class {t['class']:>4}{label}")


# ---- eval ----------------------------------------------------------------------------------------------
@click.command(name="eval")
@click.argument("spec")
@_WEIGHTS
@click.option("--data", required=True,
              help="Image folder (one sub-folder per class; ROOT/val when ROOT has train/ and val/), Parquet "
                   "shards (a folder, its validation-* shards, or a glob) or .npz (images, labels).")
@click.option("--class-index", "mapping_file", default=None,
              help="Folder name -> class index: JSON {name: index} or one name per line in index order "
                   "(default: ImageNet synset folders by the built-in list, else sorted folder names).")
@_FRAMEWORK
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass (memory is bounded by it).")
@_DTYPE
@_SIZE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def evaluate(spec, weights, data, mapping_file, framework, batch, dtype, image_size, as_json):
    """Top-1 / top-5 accuracy and images/s of SPEC with WEIGHTS on --data.

    Streams the data batch by batch; unreadable files in a folder are named on stderr,
    skipped and counted (`skipped` in --json). Progress bar on stderr.
    """
    from effv2_train.eval_data import EvalDataError, open_source
    from effv2_train.preprocess import ImageError

    arch = load_or_fail(load_architecture, spec)
    try:
        source = open_source(data, arch, mapping_file)
    except EvalDataError as exc:
        raise SpecInputError(str(exc)) from None
    classifier, size = _classifier(arch, weights, framework, dtype, image_size)
    k5 = min(5, arch.num_classes)
    counts = {"images": 0, "top1": 0, "top5": 0}
    skipped: list[str] = []
    model_s = 0.0
    started = time.perf_counter()
    with _progress(len(source), as_json) as (advance, note):
        try:
            for b in source.batches(batch, size):
                for line in b.skipped:
                    skipped.append(line)
                    note(f"skipped {printable(line)}")
                if len(b.labels):
                    t0 = time.perf_counter()
                    logits = _run(classifier, b.images, framework)
                    model_s += time.perf_counter() - t0
                    best = top_k(logits, k5)
                    counts["images"] += len(b.labels)
                    counts["top1"] += int((best[:, 0] == b.labels).sum())
                    counts["top5"] += int((best == b.labels[:, None]).any(axis=1).sum())
                advance(len(b.labels) + len(b.skipped))
        except (EvalDataError, ImageError) as exc:
            raise SpecInputError(str(exc)) from None
        except MemoryError:  # preparing a batch of large images (the forward pass has its own message)
            raise SpecInputError(f"{printable(data)}: not enough memory to prepare a batch of images at {size} px "
                                 "(a smaller --batch needs less memory)") from None
    seconds = time.perf_counter() - started
    n = counts["images"]
    if n == 0:
        raise SpecInputError(f"{data}: no readable image ({len(skipped)} file(s) skipped)")
    result = {"spec": arch.name, "data": str(data), "framework": framework, "dtype": dtype, "image_size": size,
              "images": n, "top1": counts["top1"] / n, "top5": counts["top5"] / n, "top5_k": k5,
              "correct_top1": counts["top1"], "correct_top5": counts["top5"],
              "seconds": seconds, "images_per_s": n / seconds if seconds > 0 else None,
              "model_images_per_s": n / model_s if model_s > 0 else None,
              "skipped": skipped}
    if as_json:
        echo_json(result)
        return
    click.echo(f"{arch.name} on {printable(data)} ({framework}, {dtype}, {size}x{size}): {n} images"
               + (f", {len(skipped)} unreadable file(s) skipped" if skipped else ""))
    click.echo(f"top-1 {100 * result['top1']:.2f}%  top-{k5} {100 * result['top5']:.2f}%  "
               f"{result['images_per_s']:.1f} images/s")


class _progress:
    """A rich progress bar on stderr (plain lines if rich is missing); `note` prints above it."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.bar = total, quiet, None

    def __enter__(self):
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        except ImportError:
            return (lambda n: None), (lambda line: click.echo(line, err=True))
        self.bar = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(file=sys.stderr), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("eval", total=self.total)
        return ((lambda n: self.bar.update(task, advance=n)),
                (lambda line: self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)))

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


__all__ = ["predict", "evaluate"]
