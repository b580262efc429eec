"""The strict pydantic base every spec model derives from.

Strictness is the point: a spec is a contract between three implementations, so
unknown fields, coerced types and NaN are rejected rather than guessed at.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: The spec format version this package reads and writes.
SPEC_VERSION = "1.0"


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
