"""Property-based conformance over random small specs (every convention), odd/even and non-square sizes.

The reference here is the forward written out from docs/internals.md; the comparison with the NumPy
oracle through the harness is tests/conformance/test_backends.py, parametrised over every backend.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from effv2_adapters.torch import build_model
from effv2_spec import strategies as st_effv2
from effv2_spec.resolve import resolve

from torch_testlib import manual_forward, randomize_bn, rel


@st.composite
def cases(draw):
    spec = draw(st_effv2.architecture_specs())
    size = draw(st_effv2.image_sizes(spec, max_extra=9))
    dtype = draw(st.sampled_from(["float64", "float32"]))
    if dtype == "float32":  # >= 2x2 at the end: BN over two values per channel is too ill-conditioned for float32
        size = (size[0] + spec.total_stride, size[1] + spec.total_stride)
    return spec, size, draw(st_effv2.seeds()), dtype


def _masks(resolved, batch, rng):
    masks = {f"blocks.{b.index}.drop_path": torch.from_numpy((rng.random(batch) > 0.5) * 1.0)
             for b in resolved.blocks if b.residual and b.drop_path_rate > 0}
    if resolved.classifier.dropout > 0:
        shape = (batch, resolved.classifier.in_features)
        masks["classifier.dropout"] = torch.from_numpy((rng.random(shape) > resolved.classifier.dropout) * 1.0)
    return masks


@given(cases(), st.booleans())
def test_torch_equals_the_written_out_contract(case, training):
    spec, size, seed, dtype = case
    resolved = resolve(spec, size)
    torch.manual_seed(seed % 2**31)
    model64 = build_model(resolved, torch.float64, seed=seed % 2**31)
    randomize_bn(model64, seed % 1000)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((2, spec.input.channels, *size)))
    if spec.input.normalization.in_model:
        x = x * 64 + 128
    masks = _masks(resolved, 2, rng)
    with torch.no_grad():
        expected = manual_forward(model64, x, masks, training)
        model = build_model(resolved, dtype, init=False)
        model.load_state_dict(model64.state_dict())
        mask_dtype = x.dtype if dtype == "float64" else torch.float32
        got = model.train(training)(x.to(model.classifier.weight.dtype),
                                    {k: v.to(mask_dtype) for k, v in masks.items()})
    tol = 1e-10 if dtype == "float64" else 2e-3
    assert rel(got, expected) < tol
