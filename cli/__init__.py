"""The `effv2` command line: one click group whose subcommands load lazily.

Each subcommand lives in its own module and is imported only when invoked, so
`effv2 validate` never imports numba, torch or jax. Exit codes: 0 success,
1 invalid input or failed check, 2 usage error.
"""

from __future__ import annotations

import sys

import click

from effv2_spec.lazy import load_target

#: subcommand name -> "module:attr" of its click command
COMMANDS: dict[str, str] = {
    "validate": "effv2_cli.validate:validate",
    "schema": "effv2_cli.schema:schema",
    "presets": "effv2_cli.presets:presets",
    "summary": "effv2_cli.summary:summary",
    "schedule": "effv2_cli.schedule:schedule",
    "train": "effv2_cli.train:train",
    "plot": "effv2_cli.plot:plot",
    "generate": "effv2_cli.generate:generate",
    "check": "effv2_cli.check:check",
    "convert": "effv2_cli.convert:convert",
    "conformance": "effv2_cli.conformance:conformance",
    "export": "effv2_cli.export:export",
    "predict": "effv2_cli.predict:predict",
    "eval": "effv2_cli.predict:evaluate",
    "data": "effv2_cli.data:data",
}

_HELP = {
    "validate": "Validate spec, schedule or training JSON files.",
    "schema": "Print the JSON Schema of a document kind.",
    "presets": "List the built-in specs, schedules and training configs.",
    "summary": "Per-block shapes, parameters and MACs of an architecture.",
    "schedule": "The per-stage table of a progressive schedule (Algorithm 1).",
    "train": "Train with the reference oracle (NumPy + Numba) on CPU.",
    "plot": "Loss and held-out accuracy curves of training runs (metrics.jsonl) as a PNG or JSON.",
    "generate": "Emit a standalone PyTorch or JAX model file from a spec.",
    "check": "Compare a backend (built-in, plug-in or module:Class) against the oracle, tensor by tensor.",
    "convert": "Convert peer weights (torchvision, timm, Keras, efficientnet_pytorch, d-li14) to canonical safetensors "
               "and back.",
    "conformance": "Random specs through the check harness against the oracle; shrinks and saves a failure.",
    "export": "Export a spec with canonical weights to ONNX or a torch.export .pt2 (dynamic batch).",
    "predict": "Top-K classes of images with canonical weights (oracle, torch or jax).",
    "eval": "Top-1/top-5 accuracy and images/s on an image folder or .npz.",
    "data": "Index, pack (Parquet shards) and look at training data: effv2 data index | pack | show.",
}


_OWN_PACKAGES = ("effv2", "effv2_cli", "effv2_spec", "effv2_train", "effv2_reference", "effv2_adapters")


def _third_party(module: str | None) -> bool:
    """True when the missing module is someone else's (an optional dependency), not part of effv2."""
    return bool(module) and module.split(".")[0] not in _OWN_PACKAGES


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        try:
            return load_target(target)
        except ModuleNotFoundError as exc:
            if not _third_party(exc.name):
                raise  # a broken import inside effv2 is a bug to surface, not a missing extra
            missing = exc.name

            @click.command(name=name, help=_HELP.get(name), context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def unavailable(args):
                raise click.ClickException(
                    f"'effv2 {name}' needs an optional dependency that is not installed ({missing}); "
                    "install the matching extra, e.g. pip install 'effv2[reference,torch,jax]'"
                )

            return unavailable

    def format_commands(self, ctx, formatter):
        rows = [(name, _HELP.get(name, "")) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="effv2")
def main():
    """effv2: EfficientNet V1/V2 specs, a NumPy reference oracle, and PyTorch/JAX adapters.

    SPEC arguments take a path to a JSON file or a preset name (see `effv2 presets`).
    Exit codes: 0 success, 1 invalid input or failed check, 2 usage error.
    """
    import warnings

    warnings.showwarning = _one_line_warning


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning (Pillow's, NumPy's, a framework's) as one line: no source path and line before it."""
    from .console import printable

    text = str(message).strip().splitlines()
    try:
        (file or sys.stderr).write(f"warning: {printable(text[0] if text else category.__name__)}\n")
    except (OSError, ValueError):  # stderr closed
        pass
