"""Property-based tests of the JAX model's own modes over random small specs (the harness-driven
comparison with the oracle is tests/conformance/test_backends.py, parametrised over every backend).

Each example compiles a new network (seconds of XLA time), so these run a quarter of the active
hypothesis profile's `max_examples` (ci: 3, thorough: 75).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2_adapters.jax.adapter import JaxAdapter
from effv2_spec import strategies as st_effv2
from effv2_spec.resolve import resolve

from jax_testlib import random_masks, random_tensors, rel

pytestmark = pytest.mark.jax

EXAMPLES = max(2, settings.default.max_examples // 4)


@settings(max_examples=EXAMPLES)
@given(st_effv2.architecture_specs(max_stages=2, max_channels=16), st_effv2.seeds(), st.booleans())
def test_forward_modes_float64(spec, seed, training):
    """Eval or train forward with random (non-calibrated) weights and masks, float64, 1e-9."""
    from effv2_reference.model import ReferenceModel

    rng = np.random.default_rng(seed)
    size = (spec.total_stride + int(rng.integers(0, 9)), spec.total_stride + int(rng.integers(0, 9)))
    resolved = resolve(spec, size)
    tensors = random_tensors(resolved, seed % 1000)
    x = rng.standard_normal((2, spec.input.channels, *size))
    if spec.input.normalization.in_model:
        x = x * 64 + 128
    masks = random_masks(resolved, 2, rng) if training else None
    ref = ReferenceModel(resolved, dtype="float64")
    ref.load_state_dict(tensors)
    adapter = JaxAdapter()
    got = adapter.forward(adapter.build(resolved, "float64", tensors), x, training=training, masks=masks)
    assert rel(got, ref.forward(x, training=training, masks=masks)) < 1e-9
