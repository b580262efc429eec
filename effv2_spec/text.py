"""Text that reaches a terminal: user-given names and whatever came from a file, escaped.

Here rather than in the command line's console helpers because library messages (the JAX supervisor's,
for one) quote paths too, and must not import the command-line package."""

from __future__ import annotations


def printable(text) -> str:
    """`text` with every control or other unprintable character escaped (\\x1b, \\u202e, ...), line breaks kept.

    For whatever came from a file, a folder listing or an archive before it reaches a terminal: an escape
    sequence there could clear the screen, retitle the window or hide text (OSC passes even through a pipe)."""
    text = str(text)
    if text.isprintable():
        return text
    return "\n".join("".join(c if c.isprintable() else repr(c)[1:-1] for c in line) for line in text.split("\n"))


def display_name(source) -> str:
    """A user-given path or name as a message shows it: quoted and escaped when empty or unprintable."""
    text = str(source)
    return text if text and text.isprintable() else repr(text)
