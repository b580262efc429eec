"""Compatibility name: the conformance harness now lives in `effv2_adapters.conformance`."""

from __future__ import annotations

from .conformance import *  # noqa: F401,F403
from .conformance import __all__  # noqa: F401
