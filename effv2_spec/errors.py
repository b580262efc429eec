"""Turning pydantic and JSON errors into one line per problem: `field.path: rule`.

Pydantic gives `loc` tuples like ('stages', 2, 'mbconv', 'kernel'); users want
`stages[2].kernel`. Model-level validators can only raise at their model's location,
so they prefix their message with a relative path (`input.eval_image_size: ...`),
which is folded into the location here.
"""

from __future__ import annotations

import difflib
import functools
import re
import typing

from pydantic import BaseModel, ValidationError

_REL_PATH = re.compile(r"^([A-Za-z_][\w]*(?:\[\d+\]|\.[A-Za-z_][\w]*)*): (.*)$", re.S)


def _unions(annotation, discriminator=None):
    """(members, discriminator) of every discriminated union of models inside `annotation`
    (through Annotated, Optional, list, ...), and the models met on the way."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        inner = next((m.discriminator for m in args[1:] if getattr(m, "discriminator", None)), discriminator)
        return _unions(args[0], inner)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [], [annotation]
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    found, seen = ([(tuple(models), discriminator)] if discriminator and len(models) > 1 else []), list(models)
    for arg in args:
        if arg not in models:
            more, met = _unions(arg)
            found += more
            seen += met
    return found, seen


@functools.lru_cache(maxsize=None)
def union_tags() -> dict[str, frozenset[str]]:
    """Field name -> the tags of the discriminated union it holds ('optimizer' -> sgd, rmsprop, adamw),
    read from the documents' annotations. Pydantic puts the tag in an error's location right after
    that field (and its list index): ('optimizer', 'adamw', 'beta1'), ('stages', 2, 'mbconv', 'kernel')."""
    from .architecture import ArchitectureSpec  # the documents import this module's callers, not it
    from .schedule import ProgressiveSchedule
    from .training import TrainingConfig

    out: dict[str, set[str]] = {}
    todo, done = [ArchitectureSpec, ProgressiveSchedule, TrainingConfig], set()
    while todo:
        model = todo.pop()
        if model in done:
            continue
        done.add(model)
        for name, info in model.model_fields.items():
            unions, models = _unions(info.annotation, info.discriminator)
            for members, key in unions:
                for m in members:
                    out.setdefault(name, set()).update(typing.get_args(m.model_fields[key].annotation))
            todo += models
    return {name: frozenset(tags) for name, tags in out.items()}


class SpecError(Exception):
    """A document that does not validate; `problems` holds (path, rule) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in problems))

    def lines(self, prefix: str = "") -> list[str]:
        head = f"{prefix}: " if prefix else ""
        return [f"{head}{path}: {msg}" if path else f"{head}{msg}" for path, msg in self.problems]


def format_loc(loc: tuple) -> str:
    out = ""
    field = None  # the last field name: a tag right after it (or its index) is pydantic's, not the user's
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if field is not None and part in union_tags().get(field, ()):
            field = None
            continue
        if part.startswith("function-") or part.startswith("literal["):
            continue
        field = part
        # a field name comes from the user's file: escape control characters (newlines, ANSI codes)
        out += ("." if out else "") + (part if part.isprintable() else repr(part))
    return out


def _join(path: str, rel: str) -> str:
    if not path:
        return rel
    return path + rel if rel.startswith("[") else f"{path}.{rel}"


def problems_from_validation(err: ValidationError,
                             model_fields: dict[str, list[str]] | None = None) -> list[tuple[str, str]]:
    """(path, rule) for every error in `err`, with near-name suggestions for unknown fields."""
    problems = []
    for e in err.errors(include_url=False):
        path = format_loc(tuple(e["loc"]))
        kind = e["type"]
        msg = e["msg"]
        if kind == "extra_forbidden":
            msg = "unknown field"
            name = path.rsplit(".", 1)[-1]
            parent = path.rsplit(".", 1)[0] if "." in path else ""
            suggestion = _suggest(name, parent, e, model_fields)
            if suggestion:
                msg += f" (did you mean '{suggestion}'?)"
        elif kind == "missing":
            msg = "required field is missing"
        elif kind in ("value_error", "assertion_error"):
            msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
            m = _REL_PATH.match(msg)
            if m:
                path, msg = _join(path, m.group(1)), m.group(2)
        elif kind == "union_tag_invalid":
            tags = e.get("ctx", {}).get("expected_tags", "")
            msg = f"unknown type {e.get('ctx', {}).get('tag')!r}; expected one of {tags}"
            path = _join(path, e.get("ctx", {}).get("discriminator", "'type'").strip("'"))
        elif kind == "union_tag_not_found":
            msg = "required to tell the kind apart; missing"
            path = _join(path, e.get("ctx", {}).get("discriminator", "'type'").strip("'"))
        if "input" in e and kind not in ("missing", "extra_forbidden", "value_error") and _short(e["input"]):
            msg += f" (got {e['input']!r})"
        problems.append((path, msg))
    return problems


def _short(value) -> bool:
    return isinstance(value, (int, float, str, bool)) and len(repr(value)) <= 40


def _suggest(name: str, parent: str, error: dict, model_fields: dict[str, list[str]] | None) -> str | None:
    candidates = (model_fields or {}).get(parent, [])
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def json_error_location(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col
