"""The public strategies reach the cases that matter (array-api-tests' meta tests idea)."""

import pytest
from hypothesis import Phase, find, settings

from effv2_spec import resolve, strategies as s
from effv2_spec.architecture import Conventions

COVERAGE = settings(max_examples=2000, database=None)

ARCH_CASES = {
    "fused block": lambda spec: any(st.type == "fused_mbconv" for st in spec.stages),
    "mbconv block": lambda spec: any(st.type == "mbconv" for st in spec.stages),
    "stride 2 stage": lambda spec: any(st.stride == 2 for st in spec.stages),
    "SE on": lambda spec: any(st.se_ratio for st in spec.stages),
    "SE off": lambda spec: any(st.se_ratio is None for st in spec.stages),
    "symmetric padding": lambda spec: spec.conventions.padding == "symmetric",
    "expand-project fused e1": lambda spec: spec.conventions.fused_expand1 == "expand_project"
    and any(st.type == "fused_mbconv" and st.expand_ratio == 1 for st in spec.stages),
    "residual block": lambda spec: any(b.residual for b in resolve(spec).blocks),
    "drop path active": lambda spec: any(b.drop_path_rate > 0 for b in resolve(spec).blocks),
    "odd image size": lambda spec: spec.input.eval_image_size % 2 == 1,
    "in-model normalisation": lambda spec: spec.input.normalization.in_model,
}


@pytest.mark.parametrize("case", sorted(ARCH_CASES))
def test_architecture_strategy_covers(case):
    find(s.architecture_specs(), ARCH_CASES[case], settings=COVERAGE)


@pytest.mark.parametrize("case, predicate", [
    ("one stage", lambda sc: sc.num_stages == 1),
    ("automl", lambda sc: sc.convention == "automl"),
    ("paper with regularizers", lambda sc: sc.convention == "paper" and len(sc.regularizers) >= 2),
    ("uneven steps", lambda sc: sc.total_steps % sc.num_stages != 0),
])
def test_schedule_strategy_covers(case, predicate):
    find(s.schedules(), predicate, settings=COVERAGE)


def _literal_fields(model, prefix=""):
    """(dotted path, values) of every Literal field under `model`, read here independently of strategies.py."""
    import typing

    from pydantic import BaseModel

    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _literal_fields(ann, f"{prefix}{name}.")
            continue
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if typing.get_origin(ann) is typing.Literal:
            yield prefix + name, typing.get_args(ann)
        elif args and all(typing.get_origin(a) is typing.Literal for a in args):
            yield prefix + name, (None, *(v for a in args for v in typing.get_args(a)))


def _get(doc, path):
    for part in path.split("."):
        doc = doc[part]
    return doc


FIRST_FOUND = settings(max_examples=500, database=None, phases=[Phase.generate])  # no shrinking: reached is enough
CONVENTION_VALUES = [(path, v) for path, values in _literal_fields(Conventions) for v in values]


def test_every_convention_field_is_drawn():
    drawn = find(s.conventions(), lambda c: True, settings=FIRST_FOUND)
    assert sorted(_flat_paths(drawn)) == sorted(_flat_paths(Conventions().model_dump()))
    assert ("se.gate", "hard_sigmoid") in CONVENTION_VALUES and ("se.activation", None) in CONVENTION_VALUES


def _flat_paths(doc, prefix=""):
    for k, v in doc.items():
        if isinstance(v, dict):
            yield from _flat_paths(v, f"{prefix}{k}.")
        else:
            yield prefix + k


@pytest.mark.parametrize("path, value", CONVENTION_VALUES, ids=[f"{p}={v}" for p, v in CONVENTION_VALUES])
def test_every_convention_value_is_reached(path, value):
    find(s.conventions(), lambda c: _get(c, path) == value, settings=FIRST_FOUND)
