"""Property tests over the public strategies: round trips, error paths, counts, sizes, schedules."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from effv2_spec import resolve, strategies as s
from effv2_spec.accounting import count
from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.documents import parse_obj, parse_text
from effv2_spec.errors import SpecError
from effv2_spec.resolve import ImageSizeError
from effv2_spec.rounding import conv_padding


@given(s.architecture_specs(max_stages=6, max_channels=128, max_repeats=4))
def test_architecture_json_round_trip_is_identity(spec):
    again = parse_text(spec.model_dump_json())
    assert again == spec
    assert again.model_dump_json() == spec.model_dump_json()


@given(s.schedules())
def test_schedule_json_round_trip_is_identity(sched):
    assert parse_text(sched.model_dump_json()) == sched


def _rejected_naming(doc, path):
    try:
        parse_obj(doc)
    except SpecError as exc:
        paths = [p for p, _ in exc.problems]
        assert any(p == path or p.startswith((path + ".", path + "[")) for p in paths), (path, exc.problems)
        assert all(msg for _, msg in exc.problems)
        return
    raise AssertionError(f"accepted a spec with a bad {path}")


@given(s.invalid_architecture_mutations())
def test_invalid_architecture_is_rejected_naming_the_field(mutation):
    _rejected_naming(*mutation)


@given(s.invalid_schedule_mutations())
def test_invalid_schedule_is_rejected_naming_the_field(mutation):
    _rejected_naming(*mutation)


def independent_param_count(r) -> int:
    """Closed-form count from the block plans, not from the parameter table."""
    def conv_bn(u):
        return u.out_channels * (u.in_channels // u.groups) * u.kernel * u.kernel + 2 * u.out_channels

    total = conv_bn(r.stem) + conv_bn(r.head)
    for b in r.blocks:
        for layer in b.layers:
            if layer.kind == "se":
                total += 2 * layer.channels * layer.squeeze_channels + layer.channels + layer.squeeze_channels
            else:
                total += conv_bn(layer)
    return total + r.classifier.in_features * r.classifier.out_features + r.classifier.out_features


@given(s.large_architecture_specs())
def test_parameter_table_sum_equals_closed_form_accounting(spec):
    r = resolve(spec)
    assert sum(p.numel for p in r.params if p.trainable) == independent_param_count(r) == count(r).params
    bn_channels = sum(u.out_channels for u in r.units() if u.kind == "conv_bn")
    assert count(r).buffers == 2 * bn_channels


def _simulated_size(size, kernel, stride, padding):
    before, after = conv_padding(padding, size, kernel, stride)
    return (size + before + after - kernel) // stride + 1


@given(s.architecture_specs(max_stages=5), st.integers(0, 96), st.integers(0, 96))
def test_spatial_sizes_follow_stride_and_padding(spec, dh, dw):
    h, w = spec.total_stride + dh, spec.total_stride + dw  # the smallest size resolve takes, and up
    with pytest.raises(ImageSizeError, match="image_size: must be >= "):  # the stride, or 1 when it is 1
        resolve(spec, (h, spec.total_stride - 1))
    r = resolve(spec, (h, w))
    size = (h, w)
    for unit in r.units():
        if unit.kind == "conv_bn":
            assert unit.in_size == size
            expect = tuple(_simulated_size(x, unit.kernel, unit.stride, r.padding) for x in size)
            assert unit.out_size == expect == tuple(math.ceil(x / unit.stride) for x in size)
            size = unit.out_size
    assert r.head.out_size == tuple(math.ceil(x / spec.total_stride) for x in (h, w))


@given(s.architecture_specs(max_stages=5))
def test_expanded_and_se_widths_follow_the_rules(spec):
    r = resolve(spec)
    for b in r.blocks:
        assert b.expanded_channels == int(b.in_channels * spec.stages[b.stage].expand_ratio)
        assert (b.se_channels > 0) == (spec.stages[b.stage].se_ratio is not None)
        assert b.residual == (b.stride == 1 and b.in_channels == b.out_channels)


@given(s.schedules())
def test_schedule_endpoints_monotonicity_and_step_sum(sched):
    rows = sched.stages()
    assert len(rows) == sched.num_stages
    assert sum(r.steps for r in rows) == sched.total_steps
    assert all(r.steps >= 1 for r in rows)
    assert [r.start_step for r in rows[1:]] == [r.end_step for r in rows[:-1]]
    mult = sched.image_size.multiple
    assert rows[-1].image_size == max(mult, sched.image_size.end // mult * mult)
    sizes = [r.image_size for r in rows]
    assert sizes == sorted(sizes)
    for name, ramp in sched.regularizers.items():
        values = [r.regularizers[name] for r in rows]
        assert values[-1] == ramp.end
        if sched.num_stages > 1:
            assert values[0] == ramp.start
        assert np.all(np.diff(values) >= -1e-12)
    if sched.convention == "paper" and sched.num_stages > 1:
        assert rows[0].image_size == max(mult, sched.image_size.start // mult * mult)


@given(s.architecture_specs(), st.data())
def test_input_strategy_matches_spec(spec, data):
    x = data.draw(s.inputs(spec, batch=3))
    assert x.shape[:2] == (3, spec.input.channels) and min(x.shape[2:]) >= spec.total_stride
    assert isinstance(spec, ArchitectureSpec) and np.isfinite(x).all()


@pytest.mark.parametrize("kwargs, field", [({"max_stages": 0}, "max_stages"), ({"kinds": ("resnet",)}, "kinds")])
def test_strategy_options_are_validated(kwargs, field):
    @given(s.architecture_dicts(**kwargs))
    def draw_one(_):
        pass

    with pytest.raises(ValueError, match=field):
        draw_one()
