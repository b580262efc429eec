"""Built-in presets: their names and texts (`preset_files`, data only) and their parsed documents.

`load(name)` is the validated document of a preset (an `ArchitectureSpec`, `ProgressiveSchedule` or
`TrainingConfig`). The data half lives in `preset_files`, which `documents` uses to resolve a preset
name, so neither module imports the other.
"""

from __future__ import annotations

from .documents import Document, parse_text
from .preset_files import is_preset, kind, listing, names, text


def load(name: str) -> Document:
    """The validated document of preset `name`; SpecError (suggesting near names) for an unknown one."""
    return parse_text(text(name))


__all__ = ["names", "is_preset", "text", "kind", "listing", "load"]
