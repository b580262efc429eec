"""The SE convention (`conventions.se.gate`, `conventions.se.activation`) in the oracle.

Forward against a few-line NumPy twin written from the formula (MobileNetV3's hard sigmoid is
relu6(z + 3) / 6); gradients against central differences in float64, whole model, train mode.
"""

from __future__ import annotations

import numpy as np
import pytest

from effv2_reference.gradcheck import model_gradcheck
from effv2_reference.model import ReferenceModel
from effv2_reference.ops.squeeze_excite import squeeze_excite_forward
from effv2_spec.resolve import SqueezeExcite, resolve

from test_model_gradcheck import _input, half_masks, tiny_spec


def with_se(gate: str, activation: str | None, model_activation: str = "relu6"):
    spec = tiny_spec(activation=model_activation, fused_se=0.5)
    conv = spec.conventions.model_copy(update={"se": spec.conventions.se.model_copy(
        update={"gate": gate, "activation": activation})})
    return spec.model_copy(update={"conventions": conv})


def twin(x, wr, br, we, be, activation, gate):
    """y = x * gate(We act(Wr mean_HW(x) + br) + be), x CNHW, written out."""
    act = {"relu": lambda z: np.maximum(z, 0.0), "silu": lambda z: z / (1.0 + np.exp(-z))}[activation]
    gates = {"sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
             "hard_sigmoid": lambda z: np.minimum(np.maximum(z + 3.0, 0.0), 6.0) / 6.0}
    s = x.mean(axis=(2, 3))  # (C, N)
    h = act(wr[:, :, 0, 0] @ s + br[:, None])
    return x * gates[gate](we[:, :, 0, 0] @ h + be[:, None])[:, :, None, None]


@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("activation", ["silu", "relu"])
def test_forward_equals_the_written_out_formula(gate, activation):
    rng = np.random.default_rng(0)
    c, r = 6, 3
    x = rng.standard_normal((c, 2, 5, 4)) * 2
    wr, br = rng.standard_normal((r, c, 1, 1)) * 2, rng.standard_normal(r)
    we, be = rng.standard_normal((c, r, 1, 1)) * 2, rng.standard_normal(c)  # gate inputs reach both flat parts
    y, _ = squeeze_excite_forward(x, wr, br, we, be, activation=activation, gate=gate)
    np.testing.assert_allclose(y, twin(x, wr, br, we, be, activation, gate), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("gate,activation", [("hard_sigmoid", "relu"), ("hard_sigmoid", None), ("sigmoid", "silu")])
def test_model_gradients_float64(gate, activation):
    spec = with_se(gate, activation)
    model = ReferenceModel(spec, dtype="float64", seed=3)
    se = [u for u in model.resolved.units() if isinstance(u, SqueezeExcite)]
    assert se and {(u.gate, u.activation) for u in se} == {(gate, activation or "relu6")}
    x = _input(spec, (17, 15))
    errors = model_gradcheck(model, x, masks=half_masks(model, x.shape[0]), max_entries=5)
    assert max(errors.values()) < 1e-6


def test_the_gate_changes_the_logits():
    """The convention is not decorative: the same weights give other logits under the other gate."""
    x = _input(tiny_spec(), (16, 16))
    logits = {}
    for gate in ("sigmoid", "hard_sigmoid"):
        model = ReferenceModel(with_se(gate, None), dtype="float64", seed=3)
        logits[gate] = model.forward(x, training=False)
    assert np.max(np.abs(logits["sigmoid"] - logits["hard_sigmoid"])) > 1e-3


def test_resolved_units_carry_activation_gate_slot_and_owner():
    r = resolve(with_se("hard_sigmoid", "relu", model_activation="hard_swish"), 32)
    for unit in r.units():
        assert unit.name.rsplit(".", 1)[-1] == unit.slot
        if isinstance(unit, SqueezeExcite):
            assert (unit.activation, unit.gate) == ("relu", "hard_sigmoid")
        else:
            assert unit.activation == (None if unit.slot == "project" else "hard_swish")
    assert {p.unit for p in r.params} == {u.name for u in r.units()} | {"classifier"}
    assert all(p.name.startswith(p.unit + ".") for p in r.params)
    assert r.input_mean == (120.0, 110.0, 100.0) and r.input_std == (60.0, 50.0, 70.0)
