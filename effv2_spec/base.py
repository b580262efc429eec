"""The strict pydantic base every spec model derives from.

Strictness is the point: a spec is a contract between three implementations, so
unknown fields, coerced types and NaN are rejected rather than guessed at.

One consequence needs handling: strict mode refuses a list where a tuple is declared
when it validates Python objects, while JSON arrays are accepted. A Python user's dict
from `json.load` must validate exactly as the file does, so `model_validate` sends JSON
data (dicts, lists, str, int, float, bool, None) through the JSON path.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: The spec format version this package reads and writes.
SPEC_VERSION = "1.0"

#: Names become folder and file names (runs/<name>) and are printed to terminals: plain ASCII,
#: no path separators, no leading '.' (hidden files, '..') or '-' (read as an option).
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]*$"


def _safe_name(value: str) -> str:
    if re.fullmatch(NAME_PATTERN, value) is None:
        shown = repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
        raise ValueError(f"must use only ASCII letters, digits, '.', '_' and '-', and not start with '.' or '-' "
                         f"(it becomes a folder name, runs/<name>; got {shown})")
    return value


#: A document name: 1 to 200 characters of NAME_PATTERN.
SafeName = Annotated[str, Field(min_length=1, max_length=200, json_schema_extra={"pattern": NAME_PATTERN}),
                     AfterValidator(_safe_name)]


def _is_json_data(obj: Any, depth: int = 0) -> bool:
    """True for the types `json.load` produces (so a JSON round trip changes nothing but tuples)."""
    if depth > 64:
        return False
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return True
    if isinstance(obj, (list, tuple)):
        return all(_is_json_data(v, depth + 1) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _is_json_data(v, depth + 1) for k, v in obj.items())
    return False


class SpecModel(BaseModel):
    """Frozen, strict, no extra fields; field docstrings become schema descriptions."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
        validate_default=True,
        use_attribute_docstrings=True,
    )

    @classmethod
    def model_validate(cls, obj: Any, *, strict: bool | None = None, from_attributes: bool | None = None,
                       context: Any | None = None, **kwargs: Any):
        """Validate `obj`; JSON data (as `json.load` gives) validates exactly as its JSON text would.

        Anything else (a model instance, objects with attributes) takes pydantic's Python path.
        """
        if isinstance(obj, dict) and not from_attributes and _is_json_data(obj):
            try:
                text = json.dumps(obj, allow_nan=True)
            except ValueError:  # an int beyond Python's str-conversion limit: let pydantic report it
                text = None
            if text is not None:
                return cls.model_validate_json(text, strict=strict, context=context, **kwargs)
        return super().model_validate(obj, strict=strict, from_attributes=from_attributes, context=context, **kwargs)
