"""Turning pydantic and JSON errors into one line per problem: `field.path: rule`.

Pydantic gives `loc` tuples like ('stages', 2, 'mbconv', 'kernel'); users want
`stages[2].kernel`. Model-level validators can only raise at their model's location,
so they prefix their message with a relative path (`input.eval_image_size: ...`),
which is folded into the location here.
"""

from __future__ import annotations

import difflib
import re

from pydantic import ValidationError

_REL_PATH = re.compile(r"^([A-Za-z_][\w]*(?:\[\d+\]|\.[A-Za-z_][\w]*)*): (.*)$", re.S)
_UNION_TAGS = {"fused_mbconv", "mbconv", "sgd", "rmsprop", "exponential", "cosine", "constant"}


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
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        # drop the discriminated-union tag pydantic inserts after a list index
        if part in _UNION_TAGS and i > 0 and isinstance(loc[i - 1], int):
            continue
        if part.startswith("function-") or part.startswith("literal["):
            continue
        # a field name comes from the user's file: escape control characters (newlines, ANSI codes)
        out += ("." if out else "") + (part if part.isprintable() else repr(part))
    return out


def _join(path: str, rel: str) -> str:
    if not path:
        return rel
    return path + rel if rel.startswith("[") else f"{path}.{rel}"


def problems_from_validation(err: ValidationError, model_fields: dict[str, list[str]] | None = None) -> list[tuple[str, str]]:
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
