"""Argument types shared by the benchmark scripts (argparse answers a bad value with exit 2)."""

from __future__ import annotations

import argparse


def at_least(low: int):
    """An argparse `type`: an int >= low, else the usage error "must be >= low, got value"."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse
