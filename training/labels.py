"""Class names: the built-in ImageNet-1k list, user label files and folder-name -> index maps.

`imagenet1k_classes.tsv` (shipped in the package) holds the 1000 ILSVRC-2012 classes in the
standard index order (sorted WordNet synset ids, the order every ImageNet-1k classifier uses):
one `synset<TAB>WordNet lemmas` line per class. It was generated from timm's
`timm/data/_info/imagenet_synsets.txt` and `imagenet_synset_to_lemma.txt` (Apache-2.0); its
order and names agree with google/automl `efficientnetv2/g3doc/imagenet1k_labels.txt`
(compared on a sample of lines).
Problems raise `LabelError` with one line naming the file and the rule.
"""

from __future__ import annotations

import json
import os
import stat
from functools import lru_cache
from importlib import resources

from effv2_spec.documents import MAX_DOCUMENT_BYTES


class LabelError(ValueError):
    """A labels or class-index file that does not fit; the message names it and the rule."""


@lru_cache(maxsize=1)
def imagenet1k() -> tuple[tuple[str, str], ...]:
    """((synset, name), ...) for the 1000 ImageNet-1k classes, by class index."""
    text = (resources.files("effv2_train") / "imagenet1k_classes.tsv").read_text(encoding="utf-8")
    rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line.strip())
    assert len(rows) == 1000, "imagenet1k_classes.tsv must have 1000 lines"
    return rows


def _read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of a labels or class-index file, read with the caps of a spec document."""
    if not str(path):
        raise LabelError(f"'': an empty path names no {what} file")
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # /dev/zero would never end
                raise LabelError(f"{path}: not a regular file; a {what} file is text")
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise LabelError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise LabelError(f"{path}: not a readable {what} file ({exc.strerror or exc})") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise LabelError(f"{path}: larger than {MAX_DOCUMENT_BYTES // 2**20} MiB; a {what} file is text of a few "
                         "lines per class")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabelError(f"{path}: not a readable UTF-8 {what} file ({exc})") from None


def _read_lines(path: str | os.PathLike, what: str) -> list[str]:
    lines = _read_text(path, what).replace("\r\n", "\n").replace("\r", "\n").split("\n")  # as text mode reads
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def class_names(num_classes: int, labels_file: str | os.PathLike | None = None) -> list[str] | None:
    """Names by class index: from `labels_file` (one per line; 'id<TAB>name' lines give the name),
    else the built-in ImageNet-1k names for 1000-class specs, else None (callers print indices)."""
    if labels_file is None:
        return [name for _, name in imagenet1k()] if num_classes == 1000 else None
    lines = _read_lines(labels_file, "labels")
    if len(lines) != num_classes:
        raise LabelError(f"{labels_file}: has {len(lines)} labels but the spec has num_classes = {num_classes} "
                         "(one label per line, in class-index order)")
    names = [line.split("\t", 1)[1] if "\t" in line else line for line in lines]
    empty = [i + 1 for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise LabelError(f"{labels_file}: line {empty[0]} is empty (every class needs a label)")
    return names


def class_index(folders: list[str], num_classes: int, mapping_file: str | os.PathLike | None = None) -> dict[str, int]:
    """Sub-folder name -> class index for a one-folder-per-class tree.

    With `mapping_file`: a JSON object {"folder": index, ...}, or text with one folder name per
    line in class-index order ('name<TAB>...' lines use the first column: the built-in TSV and
    automl's imagenet1k_labels.txt work as they are). Without it: ImageNet synset folder names
    (n01440764, ...) map to the ImageNet-1k index when the spec has 1000 classes; any other names
    take 0, 1, ... in sorted order (as torchvision's ImageFolder).
    """
    if mapping_file is not None:
        if str(mapping_file).lower().endswith(".json"):
            text = _read_text(mapping_file, "class-index")
            try:
                raw = json.loads(text)
            except ValueError as exc:
                raise LabelError(f"{mapping_file}: not a readable JSON class-index file ({exc})") from None
            except RecursionError:
                raise LabelError(f"{mapping_file}: JSON nested too deeply to be a class-index file") from None
            if not isinstance(raw, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                    for v in raw.values()):
                raise LabelError(f"{mapping_file}: must be a JSON object mapping folder names to integer class indices")
            mapping = {str(k): int(v) for k, v in raw.items()}
        else:
            mapping = {line.split("\t", 1)[0].strip(): i
                       for i, line in enumerate(_read_lines(mapping_file, "class-index")) if line.strip()}
        source = str(mapping_file)
    else:
        synsets = {s: i for i, (s, _) in enumerate(imagenet1k())}
        if num_classes == 1000 and folders and all(f in synsets for f in folders):
            return {f: synsets[f] for f in folders}
        mapping = {f: i for i, f in enumerate(sorted(folders))}
        source = "the sorted folder names"
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise LabelError(f"{source}: gives no class index for folder(s) {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
    bad = [f"{f} -> {mapping[f]}" for f in folders if not 0 <= mapping[f] < num_classes]
    if bad:
        raise LabelError(f"{source}: class index out of range [0, {num_classes}) for the spec's num_classes: "
                         + ", ".join(bad[:5]))
    return {f: mapping[f] for f in folders}


__all__ = ["LabelError", "imagenet1k", "class_names", "class_index"]
