"""Reading spec documents (architecture, schedule, training) from files, text or preset names.

A document says what it is in its `kind` field; `load_document` dispatches on it and
raises `SpecError` with one (path, rule) pair per problem, never a bare traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from pydantic import BaseModel, ValidationError

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


def field_names(model: type[BaseModel], prefix: str = "", out: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
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


def parse_text(text: str, expected: type[BaseModel] | None = None) -> Document:
    """Parse JSON text into the document its `kind` names (or `expected`)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        line, col = json_error_location(text, exc.pos)
        raise SpecError([("", f"malformed JSON at line {line}, column {col}: {exc.msg}")]) from None
    if not isinstance(raw, dict):
        raise SpecError([("", f"a spec document must be a JSON object, got {type(raw).__name__}")])
    model = expected
    if model is None:
        kind = raw.get("kind", "architecture")
        if kind not in KINDS:
            raise SpecError([("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")])
        model = KINDS[kind]
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        names = field_names(model)
        if model is ArchitectureSpec:
            for i in range(len(raw.get("stages", []) or [])):
                names[f"stages[{i}]"] = _stage_fields()
        raise SpecError(problems_from_validation(exc, names)) from None


def parse_obj(data: dict, expected: type[BaseModel] | None = None) -> Document:
    """Validate a Python dict (as json.loads gives) in JSON mode, so lists stand for tuples."""
    return parse_text(json.dumps(data), expected)


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, raising `SpecError` for missing, directory, binary or empty files."""
    p = Path(path)
    if not p.exists():
        raise SpecError([("", "no such file")])
    if p.is_dir():
        raise SpecError([("", "is a directory, not a JSON file")])
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SpecError([("", f"cannot read file ({exc.strerror})")]) from None
    if not data.strip():
        raise SpecError([("", "file is empty; expected a JSON object")])
    if b"\x00" in data:
        raise SpecError([("", "binary file (contains NUL bytes); expected UTF-8 JSON")])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError([("", f"not UTF-8 text (invalid byte at offset {exc.start}); expected UTF-8 JSON")]) from None


def load_document(source: str | Path, expected: type[BaseModel] | None = None) -> Document:
    """Load from a path, or from a preset name when no such path exists."""
    from . import presets

    p = Path(source)
    if not p.exists() and not str(source).endswith(".json") and "/" not in str(source):
        return presets.load(str(source))  # a preset name, or an error suggesting near names
    return parse_text(read_text(p), expected)


def load_architecture(source: str | Path) -> ArchitectureSpec:
    doc = load_document(source, None)
    if not isinstance(doc, ArchitectureSpec):
        raise SpecError([("kind", f"expected an architecture spec, got a {doc.kind} document")])
    return doc


def load_schedule(source: str | Path) -> ProgressiveSchedule:
    doc = load_document(source, None)
    if not isinstance(doc, ProgressiveSchedule):
        raise SpecError([("kind", f"expected a progressive_schedule, got a {doc.kind} document")])
    return doc


def load_training(source: str | Path) -> TrainingConfig:
    doc = load_document(source, None)
    if not isinstance(doc, TrainingConfig):
        raise SpecError([("kind", f"expected a training config, got a {doc.kind} document")])
    return doc
