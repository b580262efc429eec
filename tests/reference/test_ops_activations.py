"""Activations against closed forms and finite differences (inputs kept off the kinks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from effv2_reference.gradcheck import gradcheck
from effv2_reference.ops import activation_backward, activation_forward, get_op, sigmoid

POINTS = np.array([-7.0, -3.5, -1.0, -0.25, 0.5, 2.0, 3.5, 6.5, 9.0])
EXPECTED = {  # written from the textbook definitions, element by element
    "silu": [v / (1 + math.exp(-v)) for v in POINTS],
    "relu": [max(v, 0.0) for v in POINTS],
    "relu6": [min(max(v, 0.0), 6.0) for v in POINTS],
    "hard_swish": [v * min(max(v + 3, 0.0), 6.0) / 6 for v in POINTS],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_activation_values(name):
    y, _ = activation_forward(name, POINTS.copy())
    np.testing.assert_allclose(y, EXPECTED[name], rtol=1e-14, atol=1e-15)
    y32, _ = activation_forward(name, POINTS.astype(np.float32))
    assert y32.dtype == np.float32


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_activation_gradcheck(name):
    rng = np.random.default_rng(1)
    x = rng.uniform(-8, 8, size=(3, 2, 5, 7))
    # keep finite differences away from the kinks at 0, +-3 and 6
    for kink in (0.0, 3.0, -3.0, 6.0):
        near = np.abs(x - kink) < 1e-3
        x[near] += 0.01

    def analytic(a, r):
        _, cache = activation_forward(name, a["x"])
        return {"x": activation_backward(name, r, cache)}

    gradcheck(lambda a: activation_forward(name, a["x"])[0], {"x": x}, analytic, rtol=1e-8)


def test_sigmoid_is_stable_at_extremes():
    s = sigmoid(np.array([-1000.0, 0.0, 1000.0], dtype=np.float32))
    np.testing.assert_array_equal(s, [0.0, 0.5, 1.0])


def test_unknown_activation_and_op_list_the_choices():
    with pytest.raises(ValueError, match="silu"):
        activation_forward("gelu", POINTS)
    with pytest.raises(KeyError, match="conv2d"):
        get_op("conv3d")
