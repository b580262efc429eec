"""Built-in presets as data: the JSON files in the repository's `specs/`, shipped in the wheel.

The directory is the registry: a preset exists because its file does. This module reads names and
texts and parses nothing, so `documents` (which resolves a preset name to its text) and `presets`
(which parses a preset into its document) both build on it without importing each other.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


def _root():
    return resources.files("effv2_spec.presets_data")


@lru_cache(maxsize=1)
def names() -> tuple[str, ...]:
    return tuple(sorted(p.name[:-5] for p in _root().iterdir() if p.name.endswith(".json")))


def is_preset(name: str) -> bool:
    return name in names()


def text(name: str) -> str:
    if not is_preset(name):
        from .errors import SpecError
        import difflib

        close = difflib.get_close_matches(name, names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `effv2 presets` lists them"
        raise SpecError([("", f"no such file or preset {name!r}{hint}")])
    return (_root() / f"{name}.json").read_text(encoding="utf-8")


def kind(name: str) -> str:
    return json.loads(text(name)).get("kind", "architecture")


def listing() -> list[dict[str, str]]:
    """[{'name': ..., 'kind': ...}] for every preset."""
    return [{"name": n, "kind": kind(n)} for n in names()]
