"""Unit ops (reference/units.py): one (forward, backward) pair per unit kind, the model dispatching on `unit.kind`.

Every unit kind of effv2_spec.resolve has an entry in UNIT_OPS; each op's backward matches central
differences on tiny units (float64), for each BN mode and the unit fields the op reads; the model's tape
holds one entry per unit; and reference/model.py reads no unit field and spells no unit tensor name (an
AST check, so the property cannot come back unnoticed).
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest

import effv2_reference.units as units_module
from effv2_reference.gradcheck import gradcheck
from effv2_reference.model import ReferenceModel
from effv2_reference.units import UNIT_OPS, Conventions, RunMode, unit_tensors
from effv2_spec.resolve import Layer, as_resolved, resolve

from test_model_gradcheck import tiny_spec

MODEL_SOURCE = Path(units_module.__file__).with_name("model.py")
PRESETS = ("efficientnetv2-nano", "efficientnetv2-s", "efficientnet-b0", "efficientnet-lite0")
LAYER_CLASSES = typing.get_args(Layer)


def _kind(cls) -> str:
    return next(f.default for f in dataclasses.fields(cls) if f.name == "kind")


def test_every_unit_kind_has_an_op_pair():
    kinds = {_kind(cls) for cls in LAYER_CLASSES}
    assert kinds == {"conv_bn", "se"}  # the union as this test knows it; a new kind lands here first
    for name in PRESETS:
        kinds |= {u.kind for u in as_resolved(name).units()}
    missing = kinds - set(UNIT_OPS)
    assert not missing, f"unit kinds without an op pair in effv2_reference.units.UNIT_OPS: {sorted(missing)}"
    assert all(callable(f) and callable(b) for f, b in UNIT_OPS.values())


def test_unit_tensors_are_the_models_own_arrays():
    """Collected once: the arrays themselves, still the model's after load_state_dict (written in place)."""
    m = ReferenceModel("efficientnetv2-nano", seed=0)
    m.load_state_dict({k: v + 1 for k, v in m.state_dict().items()})
    held = {**m.params, **m.buffers}
    units = {u.name for u in m.resolved.units()}
    assert units <= set(m._units)
    for unit, t in m._units.items():
        assert set(t) == set(t.names)
        for local, array in t.items():
            assert array is held[t.names[local]] and t.names[local] == f"{unit}.{local}"
    assert sum(len(t) for t in m._units.values()) == len(held)


def test_the_tape_holds_one_entry_per_unit_in_order():
    m = ReferenceModel("efficientnetv2-nano", seed=0)
    m.forward(np.zeros((2, 3, 32, 32), np.float32), training=True)
    assert [unit for kind, unit, _ in m._tape if kind == "unit"] == list(m.resolved.units())


# ---- finite differences on tiny units ------------------------------------------------------------------
def _units():
    r = resolve(tiny_spec(fused_se=0.5, running_var="unbiased"), 16)
    by_slot = {}
    for u in r.units():
        by_slot.setdefault(u.slot, u)
    return r, by_slot


def _tensors(r, unit, rng):
    """Random float64 tensors for every tensor of `resolved` (running variances positive), and the unit's."""
    arrays = {e.name: (rng.uniform(0.5, 2.0, e.shape) if e.role == "bn_running_var" else rng.standard_normal(e.shape))
              for e in r.params}
    trainable = {e.name for e in r.params if e.trainable and e.unit == unit.name}
    return unit_tensors(r, arrays)[unit.name], trainable


CONV_CASES = {  # slot, unit fields replaced, mode, fused BN + SiLU
    "stem_stride2_silu_fused": ("stem", {}, RunMode(True), True),
    "stem_silu_apart": ("stem", {}, RunMode(True), False),
    "stem_groups2": ("stem", {}, RunMode(True, groups=2), True),
    "stem_running_stats": ("stem", {}, RunMode(False, record=True), True),
    "dw_relu6": ("dw", {"activation": "relu6"}, RunMode(True), True),
    "dw_running_stats": ("dw", {}, RunMode(False, record=True), True),
    "project_linear": ("project", {}, RunMode(True), True),
    "project_linear_running_stats": ("project", {}, RunMode(False, record=True), True),
}
SE_CASES = {
    "sigmoid_silu": {},
    "hard_sigmoid_relu": {"gate": "hard_sigmoid", "activation": "relu"},
    "hard_sigmoid_silu": {"gate": "hard_sigmoid"},
}


def _check_unit(unit, t, trainable, x, conventions, mode):
    forward, backward = UNIT_OPS[unit.kind]
    inputs = {"x": x, **{t.names[k]: v for k, v in t.items() if t.names[k] in trainable}}

    def f(a):
        return forward(unit, t, a["x"], conventions, mode)[0]

    def analytic(a, proj):
        _, cache = forward(unit, t, a["x"], conventions, mode)
        dx, grads = backward(unit, t, proj, cache, conventions, need_dx=True)
        assert set(grads) == trainable
        return {"x": dx, **grads}

    errors = gradcheck(f, inputs, analytic, max_entries=24, label=f"{unit.name}: ")
    assert set(errors) == {"x"} | trainable


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_bn_backward_matches_central_differences(monkeypatch, case):
    slot, fields, mode, fused = CONV_CASES[case]
    monkeypatch.setattr(units_module, "FUSE_BN_SILU", fused)
    r, by_slot = _units()
    unit = dataclasses.replace(by_slot[slot], **fields)
    rng = np.random.default_rng(sorted(CONV_CASES).index(case))
    t, trainable = _tensors(r, unit, rng)
    x = rng.standard_normal((unit.in_channels, 4, 7, 6))
    _check_unit(unit, t, trainable, x, Conventions.of(r), dataclasses.replace(mode, record=True))


@pytest.mark.parametrize("case", sorted(SE_CASES))
def test_se_backward_matches_central_differences(case):
    r, by_slot = _units()
    unit = dataclasses.replace(by_slot["se"], **SE_CASES[case])
    rng = np.random.default_rng(10 + sorted(SE_CASES).index(case))
    t, trainable = _tensors(r, unit, rng)
    for k in t:  # gate inputs spread over both flat parts of the hard sigmoid
        t[k] *= 2.0
    x = rng.standard_normal((unit.channels, 3, 5, 4)) * 2
    _check_unit(unit, t, trainable, x, Conventions.of(r), RunMode(True, record=True))


def test_a_unit_field_is_read_by_its_op():
    """The SE gate reaches the output through the unit alone (no argument threaded by the caller)."""
    r, by_slot = _units()
    unit = by_slot["se"]
    t, _ = _tensors(r, unit, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((unit.channels, 2, 4, 4)) * 3
    forward = UNIT_OPS["se"][0]
    y = {gate: forward(dataclasses.replace(unit, gate=gate), t, x, Conventions.of(r), RunMode(False))
         for gate in ("sigmoid", "hard_sigmoid")}
    assert y["sigmoid"][1] is None and np.max(np.abs(y["sigmoid"][0] - y["hard_sigmoid"][0])) > 1e-3


def test_conv_bn_without_input_gradient_gives_the_same_parameter_gradients():
    r, by_slot = _units()
    unit = by_slot["stem"]
    rng = np.random.default_rng(3)
    t, _ = _tensors(r, unit, rng)
    x, dy = rng.standard_normal((3, 2, 9, 8)), rng.standard_normal((unit.out_channels, 2, 5, 4))
    forward, backward = UNIT_OPS["conv_bn"]
    conventions = Conventions.of(r)
    runs = []
    for need_dx in (True, False):
        _, cache = forward(unit, t, x, conventions, RunMode(True, record=True))
        runs.append(backward(unit, t, dy, cache, conventions, need_dx=need_dx))
    assert runs[0][0] is not None and runs[1][0] is None
    assert all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_a_tape_less_forward_keeps_no_cache():
    r, by_slot = _units()
    rng = np.random.default_rng(4)
    for unit in (by_slot["stem"], by_slot["se"]):
        t, _ = _tensors(r, unit, rng)
        x = rng.standard_normal((unit.in_channels if unit.kind == "conv_bn" else unit.channels, 2, 6, 6))
        for mode in (RunMode(True), RunMode(False)):
            assert UNIT_OPS[unit.kind][0](unit, t, x, Conventions.of(r), mode)[1] is None


# ---- model.py reads no unit field and spells no unit tensor name -------------------------------------
def _unit_fields() -> set[str]:
    """Fields and properties of the unit classes, less `name` and `kind` (what the model may dispatch on) and
    names that are also ndarray attributes (`size`: the model reads arrays' sizes)."""
    names = set()
    for cls in LAYER_CLASSES:
        names |= {f.name for f in dataclasses.fields(cls)}
        names |= {k for k, v in vars(cls).items() if isinstance(v, property)}
    return {n for n in names - {"name", "kind"} if not hasattr(np.ndarray, n)}


def _unit_tensor_names() -> set[str]:
    """Local tensor names of the conv/SE units ('conv.weight', 'bn.running_var', 'reduce.bias', ...)."""
    out = set()
    for name in PRESETS:
        r = as_resolved(name)
        layers = {u.name for u in r.units()}
        out |= {e.name[len(e.unit) + 1:] for e in r.params if e.unit in layers}
    return out


def unit_plumbing(source: str) -> list[str]:
    """Reads of unit fields (`x.gate`, `x.kernel`, ...) and strings spelling a unit tensor name in `source`."""
    fields, tensors = _unit_fields(), _unit_tensor_names()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in fields:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [f"line {node.lineno}: {name!r} in a string" for name in sorted(tensors) if name in node.value]
    return found


def test_the_checker_sees_plumbing():
    assert {"conv.weight", "bn.running_var", "reduce.weight", "expand.bias"} <= _unit_tensor_names()
    assert {"gate", "kernel", "stride", "groups", "activation", "depthwise"} <= _unit_fields()
    bad = ('def f(self, unit, p):\n    return unit.gate, unit.stride, p[f"{unit.name}.conv.weight"], '
           'p[unit.name + ".bn.running_var"]\n')
    assert len(unit_plumbing(bad)) == 4
    assert unit_plumbing("def f(self, unit, v):\n    return UNIT_OPS[unit.kind], unit.name, v.size\n") == []


def test_model_reads_no_unit_field_and_builds_no_unit_tensor_name():
    found = unit_plumbing(MODEL_SOURCE.read_text())
    assert not found, ("reference/model.py reads unit fields or spells unit tensor names (units.py is the place): "
                       + "; ".join(found))
