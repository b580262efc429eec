"""The Flax NNX runtime model: weight exchange, conventions, and the forward against the oracle (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from effv2_adapters.jax import modules
from effv2_adapters.jax.adapter import JaxAdapter
from effv2_adapters.jax.build import build_model
from effv2_adapters.jax.weights import load_canonical_tensors, load_safetensors, save_safetensors, state_to_canonical
from effv2_spec.resolve import resolve
from effv2_spec.rounding import conv_padding as spec_conv_padding
from effv2_spec.weights import WeightsError

from effv2_train.init import initial_tensors
from jax_testlib import random_masks, random_tensors, rel, tiny_spec
from shared_specs import constant_inits_flipped

pytestmark = pytest.mark.jax


def test_padding_formula_matches_the_spec():
    for conv in ("tf_same", "symmetric"):
        for size in range(1, 40):
            for k in (1, 3, 5, 7):
                for s in (1, 2):
                    assert modules.conv_padding(conv, size, k, s) == spec_conv_padding(conv, size, k, s)


def test_state_names_and_shapes_are_the_canonical_table():
    resolved = resolve(tiny_spec(), 16)
    tensors = state_to_canonical(build_model(resolved, "float32"), resolved)
    assert {k: v.shape for k, v in tensors.items()} == {p.name: p.shape for p in resolved.params}
    assert all(v.dtype == np.float32 for v in tensors.values())


def test_init_follows_the_rules_and_is_seeded():
    resolved = resolve(tiny_spec(), 16)
    a = state_to_canonical(build_model(resolved, "float64", seed=3))
    b = state_to_canonical(build_model(resolved, "float64", seed=3))
    c = state_to_canonical(build_model(resolved, "float64", seed=4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["stem.conv.weight"], c["stem.conv.weight"])
    for p in resolved.params:
        t = a[p.name]
        if p.init.kind in ("zeros", "ones"):
            assert np.all(t == (1.0 if p.init.kind == "ones" else 0.0)), p.name
        elif p.init.kind == "truncated_normal":
            assert np.max(np.abs(t)) <= 2 * p.init.scale + 1e-12
        elif p.init.kind == "uniform":
            assert np.max(np.abs(t)) <= p.init.scale


def test_init_is_the_oracles_with_constant_init_conventions():
    """The JAX init draws what the oracle draws, tensor for tensor, for the resolved table as it is and
    with every constant rule flipped (ones <-> zeros): constants travel in the table too."""
    resolved = resolve(tiny_spec(), 16)
    for table in (resolved, constant_inits_flipped(resolved)):
        got = state_to_canonical(build_model(table, "float64", seed=5), table)
        want = initial_tensors(table, 5, "float64")
        assert set(got) == set(want)
        assert [k for k in want if not np.array_equal(got[k], want[k])] == []
    gamma = "blocks.3.project.bn.weight"
    assert resolved.param(gamma).init.kind == "ones" and np.all(got[gamma] == 0.0)  # zero-gamma, as flipped


def test_weights_round_trip_exact(tmp_path):
    resolved = resolve(tiny_spec(), 16)
    tensors = random_tensors(resolved, 1)
    model = JaxAdapter().build(resolved, "float64", tensors)
    out = JaxAdapter().export_tensors(model)
    assert set(out) == set(tensors) and all(np.array_equal(out[k], tensors[k]) for k in tensors)
    path = tmp_path / "w.safetensors"
    save_safetensors(model, path, resolved)
    other = load_safetensors(build_model(resolved, "float64", init=False), path)
    again = state_to_canonical(other)
    assert all(np.array_equal(again[k], tensors[k]) for k in tensors)
    f32 = state_to_canonical(JaxAdapter().build(resolved, "float32", tensors))
    assert all(np.array_equal(f32[k], tensors[k].astype(np.float32)) for k in tensors)


def test_weight_errors_name_the_tensors():
    resolved = resolve(tiny_spec(), 16)
    tensors = random_tensors(resolved)
    model = build_model(resolved, "float32", init=False)
    bad = dict(tensors)
    del bad["blocks.1.se.reduce.bias"]
    bad["blocks.9.dw.conv.weight"] = np.zeros((1,))
    bad["stem.conv.weight"] = np.zeros((8, 3, 5, 5))
    with pytest.raises(WeightsError) as info:
        load_canonical_tensors(model, bad, resolved)
    msg = str(info.value)
    assert "blocks.1.se.reduce.bias" in msg and "blocks.9.dw.conv.weight" in msg and "stem.conv.weight" in msg
    with pytest.raises(WeightsError, match="stem.conv.weight"):  # without the spec: the model's own check
        load_canonical_tensors(model, {**tensors, "stem.conv.weight": np.zeros((8, 3, 5, 5))})
    partial = {k: v for k, v in tensors.items() if not k.endswith(("running_mean", "running_var"))}
    load_canonical_tensors(model, partial, resolved, require_buffers=False)
    with pytest.raises(WeightsError, match="running_mean"):
        load_canonical_tensors(model, partial, resolved)


def _oracle(spec, resolved, tensors):
    from effv2_reference.model import ReferenceModel

    ref = ReferenceModel(resolved, dtype="float64")
    ref.load_state_dict(tensors)
    return ref


@pytest.mark.parametrize("conventions,size", [
    ({"padding": "tf_same"}, (17, 23)),
    ({"padding": "symmetric", "activation": "hard_swish",
      "batch_norm": {"eps": 1e-5, "momentum": 0.3, "running_var": "unbiased"}}, (16, 21)),
], ids=["tf_same-17x23", "symmetric-unbiased-16x21"])
def test_forward_equals_the_oracle_float64(conventions, size):
    spec = tiny_spec(**conventions)
    resolved = resolve(spec, size)
    tensors = random_tensors(resolved, 2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 3, *size))
    adapter = JaxAdapter()
    model = adapter.build(resolved, "float64", tensors)
    ref = _oracle(spec, resolved, tensors)
    assert rel(adapter.forward(model, x, training=False), ref.forward(x, training=False)) < 1e-9
    masks = random_masks(resolved, 3, rng)
    got = adapter.forward(model, x, training=True, masks=masks)
    assert rel(got, ref.forward(x, training=True, masks=masks)) < 1e-9
    after, ref_after = adapter.export_tensors(model), ref.state_dict()
    for p in resolved.buffers():
        assert rel(after[p.name], ref_after[p.name]) < 1e-9, p.name
    dlogits = rng.standard_normal((3, spec.num_classes))
    logits, grads = adapter.forward_backward(model, x, dlogits, masks=masks)
    assert rel(logits, ref.forward(x, training=True, masks=masks)) < 1e-9
    ref_grads = ref.backward(dlogits)
    assert set(grads) == {p.name for p in resolved.trainable()}
    for name, g in ref_grads.items():
        assert rel(grads[name], g) < 1e-8 or np.max(np.abs(g)) < 1e-12, name


def test_float32_and_float64_in_one_process():
    resolved = resolve(tiny_spec(), 16)
    tensors = random_tensors(resolved, 3)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    adapter = JaxAdapter()
    m64 = adapter.build(resolved, "float64", tensors)
    m32 = adapter.build(resolved, "float32", tensors)
    y64 = adapter.forward(m64, x, training=False)
    y32 = adapter.forward(m32, x, training=False)
    assert y64.dtype == np.float64 and y32.dtype == np.float32
    assert rel(y32, y64) < 1e-4
    assert all(v.dtype == np.float32 for v in adapter.export_tensors(m32).values())


def test_missing_masks_are_drawn_and_in_model_normalisation():
    spec = tiny_spec()
    data = spec.model_dump(mode="json")
    data["input"]["normalization"] = {"mean": [100.0, 120.0, 140.0], "std": [50.0, 60.0, 70.0], "in_model": True}
    from effv2_spec.architecture import ArchitectureSpec
    from effv2_spec.documents import parse_obj

    spec_norm = parse_obj(data, ArchitectureSpec)
    resolved, resolved_norm = resolve(spec, 16), resolve(spec_norm, 16)
    tensors = random_tensors(resolved, 4)
    adapter = JaxAdapter()
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16))
    raw = x * np.array([50.0, 60.0, 70.0])[None, :, None, None] + np.array([100.0, 120.0, 140.0])[None, :, None, None]
    plain = adapter.forward(adapter.build(resolved, "float64", tensors), x, training=False)
    normed = adapter.forward(adapter.build(resolved_norm, "float64", tensors), raw, training=False)
    assert rel(normed, plain) < 1e-12
    model = adapter.build(resolved, "float64", tensors)
    a = adapter.forward(model, x, training=True)  # masks drawn from the model's rng stream
    b = adapter.forward(model, x, training=True)
    assert a.shape == (2, spec.num_classes) and np.all(np.isfinite(a)) and not np.array_equal(a, b)
