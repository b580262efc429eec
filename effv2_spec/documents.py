"""Reading spec documents (architecture, schedule, training) from files, text or preset names.

A document says what it is in its `kind` field; `load_document` dispatches on it and
raises `SpecError` with one (path, rule) pair per problem, never a bare traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

from pydantic import BaseModel, ValidationError

from . import preset_files
from .architecture import ArchitectureSpec
from .errors import SpecError, json_error_location, problems_from_validation
from .schedule import ProgressiveSchedule
from .training import TrainingConfig

Document = Union[ArchitectureSpec, ProgressiveSchedule, TrainingConfig]
KINDS: dict[str, type[BaseModel]] = {
    "architecture": ArchitectureSpec,
    "progressive_schedule": ProgressiveSchedule,
    "training": TrainingConfig,
}


def field_names(model: type[BaseModel], prefix: str = "",
                out: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Map each nested model path (as error paths print it) to its field names, for suggestions."""
    out = {} if out is None else out
    out.setdefault(prefix, []).extend(model.model_fields)
    for name, info in model.model_fields.items():
        for sub in _submodels(info.annotation):
            field_names(sub, f"{prefix}.{name}" if prefix else name, out)
    return out


def _submodels(annotation) -> list[type[BaseModel]]:
    import typing

    found = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    for arg in typing.get_args(annotation):
        found.extend(_submodels(arg))
    return found


def _stage_fields() -> list[str]:
    from .architecture import FusedMBConvStage

    return list(FusedMBConvStage.model_fields)


#: A spec is a few kilobytes; anything this large is a wrong file (or /dev/zero), not a spec.
MAX_DOCUMENT_BYTES = 16 * 2**20
#: Integer literals longer than this are never a valid value; their exact value is not needed to
#: pick the document kind, and Python refuses to convert more than 4300 digits.
_MAX_INT_DIGITS = 1000


def _parse_int(literal: str) -> int:
    # the pre-parse only dispatches on `kind`; pydantic re-reads the text and reports the field
    return int(literal) if len(literal) <= _MAX_INT_DIGITS else 0


def _raw_document(text: str) -> dict:
    """The JSON object of `text`, or `SpecError` for malformed, too deeply nested or non-object JSON."""
    try:
        raw = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        line, col = json_error_location(text, exc.pos)
        raise SpecError([("", f"malformed JSON at line {line}, column {col}: {exc.msg}")]) from None
    except RecursionError:
        raise SpecError([("", "JSON nested too deeply to be a spec document")]) from None
    if not isinstance(raw, dict):
        raise SpecError([("", f"a spec document must be a JSON object, got {type(raw).__name__}")])
    return raw


def _model_for(raw: dict) -> type[BaseModel]:
    kind = raw.get("kind", "architecture")
    if not isinstance(kind, str) or kind not in KINDS:
        scalar = isinstance(kind, (str, int, float, bool)) or kind is None
        shown = repr(kind) if scalar else f"a JSON {_json_type(kind)}"
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise SpecError([("kind", f"must be one of {', '.join(KINDS)} (got {shown})")])
    return KINDS[kind]


def _json_type(value) -> str:
    return {list: "array", dict: "object"}.get(type(value), type(value).__name__)


def parse_text(text: str, expected: type[BaseModel] | None = None) -> Document:
    """Parse JSON text into the document its `kind` names (or `expected`)."""
    raw = _raw_document(text)
    model = expected if expected is not None else _model_for(raw)
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        names = field_names(model)
        stages = raw.get("stages")
        if model is ArchitectureSpec and isinstance(stages, list):
            for i in range(len(stages)):
                names[f"stages[{i}]"] = _stage_fields()
        raise SpecError(problems_from_validation(exc, names)) from None


def parse_obj(data: dict, expected: type[BaseModel] | None = None) -> Document:
    """Validate a Python dict (as json.loads gives) in JSON mode, so lists stand for tuples."""
    try:
        text = json.dumps(data)
    except (TypeError, ValueError) as exc:  # not JSON data (a set, bytes, an int past Python's digit limit)
        raise SpecError([("", f"not JSON data ({exc})")]) from None
    return parse_text(text, expected)


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, raising `SpecError` for missing, directory, binary, huge or empty files."""
    if str(path) == "":
        raise SpecError([("", "an empty path names no file")])
    p = Path(path)
    if not p.exists():
        raise SpecError([("", "no such file")])
    if p.is_dir():
        raise SpecError([("", "is a directory, not a JSON file")])
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise SpecError([("", f"cannot read file ({exc.strerror or exc})")]) from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise SpecError([("", f"larger than {MAX_DOCUMENT_BYTES // 2**20} MiB; a spec document is a few kilobytes")])
    if not data.strip():
        raise SpecError([("", "file is empty; expected a JSON object")])
    if b"\x00" in data:
        raise SpecError([("", "binary file (contains NUL bytes); expected UTF-8 JSON")])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError([("", f"not UTF-8 text (invalid byte at offset {exc.start}); expected UTF-8 JSON")]) from None


def _names_preset(source: str) -> bool:
    """A bare name (no folder, no .json) is a preset name; `./name` always means the path."""
    return "/" not in source and os.sep not in source and not source.endswith(".json")


def load_document(source: str | Path, expected: type[BaseModel] | None = None) -> Document:
    """Load a preset by name, or a file by path.

    A bare name that is a preset means the preset even when a file or folder of that name
    exists here (`shadowed_preset` says so); write `./name` for the path.
    """
    text = str(source)
    if text and _names_preset(text) and (preset_files.is_preset(text) or not Path(text).exists()):
        return parse_text(preset_files.text(text))  # a preset name, or an error suggesting near names
    return parse_text(read_text(text), expected)


def shadowed_preset(source: str | Path) -> str | None:
    """A note when `source` names a preset and also an existing path here (the preset is used)."""
    text = str(source)
    if not (text and _names_preset(text) and preset_files.is_preset(text) and Path(text).exists()):
        return None
    what = "folder" if Path(text).is_dir() else "file"
    return f"{text}: using the built-in preset; write ./{text} for the {what} of that name here"


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def load_architecture(source: str | Path) -> ArchitectureSpec:
    doc = load_document(source, None)
    if not isinstance(doc, ArchitectureSpec):
        raise SpecError([("kind", f"expected an architecture spec, got {_a(doc.kind)} document")])
    return doc


def load_schedule(source: str | Path) -> ProgressiveSchedule:
    doc = load_document(source, None)
    if not isinstance(doc, ProgressiveSchedule):
        raise SpecError([("kind", f"expected a progressive_schedule, got {_a(doc.kind)} document")])
    return doc


def load_training(source: str | Path) -> TrainingConfig:
    doc = load_document(source, None)
    if not isinstance(doc, TrainingConfig):
        raise SpecError([("kind", f"expected a training config, got {_a(doc.kind)} document")])
    return doc
