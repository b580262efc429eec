"""Public hypothesis strategies for effv2 documents and inputs.

Use them to test your own EfficientNet implementation against the spec:

    from hypothesis import given
    from effv2_spec import strategies as st_effv2

    @given(st_effv2.architecture_specs(), st_effv2.seeds())
    def test_mine(spec, seed): ...

Strategies return validated pydantic documents (`architecture_specs`, `schedules`) or
JSON-ready dicts (`*_dicts`), so a failing example prints as JSON you can save and
replay with `effv2 check`. Invalid mutations come with the field path an error
message must name. Dense arrays come from a drawn seed and NumPy's generator, not
element-wise strategies, which keeps shrinking fast.
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Any, Literal

import numpy as np
from hypothesis import strategies as st
from pydantic import BaseModel

from .architecture import ArchitectureSpec, Conventions
from .documents import parse_obj
from .schedule import REGULARIZER_BOUNDS, ProgressiveSchedule


def literal_values(annotation) -> tuple | None:
    """The values a Literal field takes (None too when it is optional), or None for any other type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return args
    if origin in (typing.Union, types.UnionType) and all(a is type(None) or typing.get_origin(a) is Literal
                                                          for a in args):
        return tuple(v for a in args for v in ((None,) if a is type(None) else typing.get_args(a)))
    return None


ACTIVATIONS = literal_values(Conventions.model_fields["activation"].annotation)

#: the values drawn for the conventions' numeric fields; every Literal field is drawn from its annotation
NUMERIC_CONVENTIONS = {"batch_norm.eps": (1e-3, 1e-5, 0.01), "batch_norm.momentum": (0.1, 0.01, 0.5, 1.0),
                       "stochastic_depth.rate": (0.0, 0.2, 0.5)}


def _field_draws(model: type[BaseModel], prefix: str = "") -> dict[str, st.SearchStrategy]:
    """One strategy per field of `model`: a Literal's every value (its default first, where shrinking goes),
    a nested model's fields, or NUMERIC_CONVENTIONS. A field with none of these stops the import, so a new
    convention cannot go undrawn."""
    out = {}
    for name, info in model.model_fields.items():
        path, values = prefix + name, literal_values(info.annotation)
        if values is not None:
            out[name] = st.sampled_from(sorted(values, key=lambda v: v != info.default))
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out[name] = st.fixed_dictionaries(_field_draws(info.annotation, path + "."))
        elif path in NUMERIC_CONVENTIONS:
            out[name] = st.sampled_from(NUMERIC_CONVENTIONS[path])
        else:
            raise TypeError(f"conventions.{path}: no values to draw; add them to NUMERIC_CONVENTIONS")
    return out


_CONVENTIONS = st.fixed_dictionaries(_field_draws(Conventions))


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (got {value!r})")


@st.composite
def conventions(draw, *, official: bool = False) -> dict[str, Any]:
    """A `conventions` object: official google/automl values, or any legal combination."""
    if official:
        return {}
    return draw(_CONVENTIONS)


@st.composite
def stage_dicts(draw, *, max_channels: int = 32, max_repeats: int = 2, kinds=("fused_mbconv", "mbconv"),
                kernels=(1, 3, 5), max_expand: int = 6) -> dict[str, Any]:
    """One stage: any kind, odd kernel, stride 1 or 2, expand >= 1, optional SE."""
    stage = {
        "type": draw(st.sampled_from(list(kinds))),
        "kernel": draw(st.sampled_from(list(kernels))),
        "stride": draw(st.sampled_from([1, 2])),
        "expand_ratio": float(draw(st.integers(1, max_expand))),
        "out_channels": draw(st.integers(1, max_channels)),
        "repeats": draw(st.integers(1, max_repeats)),
    }
    if draw(st.booleans()):
        stage["se_ratio"] = draw(st.sampled_from([0.25, 0.5, 1.0, 0.125]))
    return stage


@st.composite
def architecture_dicts(draw, *, max_stages: int = 3, max_channels: int = 32, max_repeats: int = 2,
                       kinds=("fused_mbconv", "mbconv"), official_conventions: bool = False,
                       max_classes: int = 10, scaled: bool = True) -> dict[str, Any]:
    """A JSON-ready architecture spec dict; small by default so backends can run it."""
    _check_positive("max_stages", max_stages)
    _check_positive("max_channels", max_channels)
    _check_positive("max_repeats", max_repeats)
    if not kinds or set(kinds) - {"fused_mbconv", "mbconv"}:
        raise ValueError(f"kinds must be a non-empty subset of ('fused_mbconv', 'mbconv') (got {kinds!r})")
    stages = draw(st.lists(stage_dicts(max_channels=max_channels, max_repeats=max_repeats, kinds=kinds),
                           min_size=1, max_size=max_stages))
    stem_stride = draw(st.sampled_from([1, 2]))
    total = stem_stride * int(np.prod([s["stride"] for s in stages]))
    channels = draw(st.sampled_from([1, 3]))
    size = draw(st.integers(total, max(total, 2 * total + 7)))
    spec = {
        "effv2_spec_version": "1.0",
        "kind": "architecture",
        "name": "hypothesis",
        "num_classes": draw(st.integers(1, max_classes)),
        "input": {
            "channels": channels,
            "train_image_size": size,
            "eval_image_size": size,
            "normalization": {"mean": [draw(st.sampled_from([0.0, 128.0]))] * channels,
                              "std": [draw(st.sampled_from([1.0, 64.0]))] * channels,
                              "in_model": draw(st.booleans())},
        },
        "stem": {"kernel": draw(st.sampled_from([1, 3, 5])), "stride": stem_stride,
                 "channels": draw(st.integers(1, max_channels))},
        "stages": stages,
        "head": {"channels": draw(st.integers(1, 2 * max_channels)), "dropout": draw(st.sampled_from([0.0, 0.2, 0.5]))},
        "scaling": {
            "width": draw(st.sampled_from([1.0, 0.5, 1.1, 1.25])) if scaled else 1.0,
            "depth": draw(st.sampled_from([1.0, 1.1, 1.5])) if scaled else 1.0,
            "divisor": draw(st.sampled_from([1, 4, 8])),
            "min_channels": draw(st.sampled_from([1, 4, 8])),
            "round_limit": draw(st.sampled_from([0.0, 0.9])),
        },
        "conventions": draw(conventions(official=official_conventions)),
    }
    return spec


def architecture_specs(**kwargs) -> st.SearchStrategy[ArchitectureSpec]:
    """Validated `ArchitectureSpec`s; keyword options as `architecture_dicts`."""
    return architecture_dicts(**kwargs).map(lambda d: parse_obj(d, ArchitectureSpec))


def large_architecture_specs() -> st.SearchStrategy[ArchitectureSpec]:
    """Deep and wide specs (up to 8 stages, 640 channels, 20 repeats) for spec-level properties only."""
    return architecture_specs(max_stages=8, max_channels=640, max_repeats=20, max_classes=21843)


@st.composite
def schedule_dicts(draw, *, max_stages: int = 12, max_steps: int = 200_000) -> dict[str, Any]:
    """A JSON-ready progressive schedule with any convention, 1..max_stages stages."""
    m = draw(st.integers(1, max_stages))
    n = draw(st.integers(m, max(m, max_steps)))
    start = draw(st.integers(8, 256))
    end = draw(st.integers(start, 512))
    regs = {}
    for name in draw(st.sets(st.sampled_from(sorted(REGULARIZER_BOUNDS)))):
        lo, hi = REGULARIZER_BOUNDS[name]
        a = draw(st.floats(lo, hi, allow_nan=False))
        b = draw(st.floats(a, hi, allow_nan=False))
        regs[name] = {"start": a, "end": b}
    return {
        "effv2_spec_version": "1.0",
        "kind": "progressive_schedule",
        "name": "hypothesis",
        "convention": draw(st.sampled_from(literal_values(ProgressiveSchedule.model_fields["convention"].annotation))),
        "total_steps": n,
        "num_stages": m,
        "image_size": {"start": start, "end": end,
                       "multiple": draw(st.sampled_from([m for m in (1, 8, 16) if m <= end]))},
        "regularizers": regs,
    }


def schedules(**kwargs) -> st.SearchStrategy[ProgressiveSchedule]:
    """Validated `ProgressiveSchedule`s."""
    return schedule_dicts(**kwargs).map(lambda d: parse_obj(d, ProgressiveSchedule))


# ---- invalid mutations ---------------------------------------------------------------------
def _set(doc: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(doc)
    cur = out
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    return out


def _delete(doc: dict, path: tuple) -> dict:
    out = copy.deepcopy(doc)
    cur = out
    for key in path[:-1]:
        cur = cur[key]
    del cur[path[-1]]
    return out


def _dotted(path: tuple) -> str:
    s = ""
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else ("." if s else "") + p
    return s


@st.composite
def invalid_architecture_mutations(draw, **kwargs) -> tuple[dict, str]:
    """(invalid spec dict, field path the error must name), from a valid spec and one bad edit."""
    spec = draw(architecture_dicts(**kwargs))
    i = draw(st.integers(0, len(spec["stages"]) - 1))
    stage = ("stages", i)
    options = [
        (stage + ("kernel",), draw(st.sampled_from([0, 2, 4, 6, -3]))),
        (stage + ("stride",), draw(st.sampled_from([0, 3, 4, -1]))),
        (stage + ("out_channels",), draw(st.integers(-64, 0))),
        (stage + ("repeats",), draw(st.integers(-3, 0))),
        (stage + ("expand_ratio",), draw(st.sampled_from([0.0, 0.5, 0.99, -1.0]))),
        (stage + ("se_ratio",), draw(st.sampled_from([0.0, -0.25, 1.5, 2.0]))),
        (stage + ("kernel",), "3"),
        (stage + ("type",), "inverted_residual"),
        (("stem", "channels"), draw(st.integers(-8, 0))),
        (("stem", "kernel"), 2),
        (("head", "dropout"), draw(st.sampled_from([1.0, -0.1, 1.5]))),
        (("head", "channels"), 0),
        (("num_classes",), 0),
        (("scaling", "width"), 0.0),
        (("scaling", "divisor"), 0),
        (("conventions", "padding"), "valid"),
        (("conventions", "batch_norm", "eps"), 0.0),
        (("conventions", "activation"), "tanh"),
        (("input", "channels"), 0),
    ]
    choice = draw(st.integers(0, len(options) + 3))
    if choice < len(options):
        path, value = options[choice]
        return _set(spec, path, value), _dotted(path)
    if choice == len(options):
        return _set(spec, stage + ("kernal",), 3), _dotted(stage + ("kernal",))
    if choice == len(options) + 1:
        return _delete(spec, stage + ("out_channels",)), _dotted(stage + ("out_channels",))
    if choice == len(options) + 2:
        return _set(spec, ("head", "colour"), "red"), "head.colour"
    # image smaller than the total stride: force stride-2 everywhere so total >= 4
    bad = copy.deepcopy(spec)
    bad["stem"]["stride"] = 2
    for s in bad["stages"]:
        s["stride"] = 2
    total = 2 ** (1 + len(bad["stages"]))
    bad["input"]["train_image_size"] = total - 1
    bad["input"]["eval_image_size"] = total
    return bad, "input.train_image_size"


@st.composite
def invalid_schedule_mutations(draw) -> tuple[dict, str]:
    """(invalid schedule dict, field path the error must name)."""
    sched = draw(schedule_dicts())
    n = sched["total_steps"]
    options = [
        (("num_stages",), 0),
        (("num_stages",), n + draw(st.integers(1, 10))),
        (("total_steps",), draw(st.integers(-5, 0))),
        (("convention",), "linear"),
        (("image_size", "end"), 0),
        (("image_size", "start"), sched["image_size"]["end"] + draw(st.integers(1, 50))),
        (("regularizers", "dropout"), {"start": 0.1, "end": 1.5}),
        (("regularizers", "weight_decay"), {"start": 0.0, "end": 1.0}),
        (("regularizers", "mixup_alpha"), {"start": -1.0, "end": 0.2}),
        (("name",), ""),
    ]
    path, value = options[draw(st.integers(0, len(options) - 1))]
    bad = _set(sched, path, value)
    if path == ("regularizers", "dropout"):
        return bad, "regularizers.dropout.end"
    if path == ("regularizers", "mixup_alpha"):
        return bad, "regularizers.mixup_alpha.start"
    return bad, _dotted(path)


# ---- inputs ----------------------------------------------------------------------------------
def seeds() -> st.SearchStrategy[int]:
    return st.integers(0, 2**32 - 1)


@st.composite
def image_sizes(draw, spec: ArchitectureSpec, *, max_extra: int = 16) -> tuple[int, int]:
    """(H, W) no smaller than the total stride; odd and even, square or not."""
    total = spec.total_stride
    return (draw(st.integers(total, total + max_extra)), draw(st.integers(total, total + max_extra)))


@st.composite
def inputs(draw, spec: ArchitectureSpec, *, batch: int = 2, dtype: str = "float64",
           size: tuple[int, int] | None = None) -> np.ndarray:
    """An NCHW batch of standard-normal inputs for `spec` (normalised scale, or raw pixels if in-model)."""
    _check_positive("batch", batch)
    h, w = size if size is not None else draw(image_sizes(spec))
    rng = np.random.default_rng(draw(seeds()))
    x = rng.standard_normal((batch, spec.input.channels, h, w))
    if spec.input.normalization.in_model:
        x = np.clip(x * 64 + 128, 0, 255)
    return x.astype(dtype)
