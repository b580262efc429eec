"""`--image-size N` or `--image-size H W`: one option that takes a square size or a height and a width.

Click options take a fixed number of values; this one takes a second when the next word is a number,
so `--image-size 384` keeps working and `--image-size 65 97` gives a non-square input.
"""

from __future__ import annotations

import click

from effv2_spec.architecture import MAX_IMAGE_SIZE


class ImageSize(click.ParamType):
    """'N' -> (N, N); 'H W' -> (H, W); each in [1, MAX_IMAGE_SIZE]."""

    name = "N | H W"

    def convert(self, value, param, ctx) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        words = str(value).split()
        if not 1 <= len(words) <= 2 or not all(w.isdigit() for w in words):
            self.fail(f"expected N or H W (positive integers), got {value!r}", param, ctx)
        sizes = [int(w) for w in words]
        if not all(1 <= s <= MAX_IMAGE_SIZE for s in sizes):
            self.fail(f"each size must be in 1..{MAX_IMAGE_SIZE} (got {value})", param, ctx)
        return (sizes[0], sizes[-1])


class ImageSizeOption(click.Option):
    """An option whose value may be followed by a second number (the width)."""

    def add_to_parser(self, parser, ctx) -> None:
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            parsed = getattr(parser, "_long_opt", {}).get(name) or getattr(parser, "_short_opt", {}).get(name)
            if parsed is not None:  # without click's parser internals, the option still takes N
                parsed.process = _greedy(parsed.process)


def _greedy(process):
    def take_width(value, state) -> None:
        if state.rargs and state.rargs[0].isdigit():
            value = f"{value} {state.rargs.pop(0)}"
        process(value, state)

    return take_width


__all__ = ["ImageSize", "ImageSizeOption"]
