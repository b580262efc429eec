"""The Philox kernel: each row's first uniforms are NumPy's `Generator(Philox(key)).random(n)`, and the masks are
unchanged."""

import json

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2_spec.documents import parse_obj
from effv2_spec.presets import load as load_preset
from effv2_train import plan as plan_module
from effv2_reference.kernels.data.philox import philox_uniforms, philox_uniforms_into, philox_uniforms_naive
from effv2_train.keyed import generator_from_key, philox_keys
from effv2_train.plan import PURPOSE_DROP_PATH, PURPOSE_DROPOUT, TrainingPlan, keyed_rng

U64 = st.integers(0, 2**64 - 1)
KEY_WORD = st.one_of(st.sampled_from([0, 1, 2**63, 2**64 - 1]), U64)


def numpy_uniforms(keys, n, counter=None):
    if counter is None:
        gens = [generator_from_key(np.asarray(k, np.uint64)) for k in keys]
    else:
        gens = [np.random.Generator(np.random.Philox(key=np.asarray(k, np.uint64), counter=counter)) for k in keys]
    return np.stack([g.random(n) for g in gens]) if gens else np.empty((0, n))


def assert_identical(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@settings(max_examples=150, deadline=None)
@given(keys=st.lists(st.tuples(KEY_WORD, KEY_WORD), min_size=0, max_size=6), n=st.integers(0, 600))
def test_kernel_is_numpys_generator(keys, n):
    arr = np.array(keys, np.uint64).reshape(-1, 2)
    expect = numpy_uniforms(arr, n)
    assert_identical(philox_uniforms(arr, n), expect)
    assert_identical(philox_uniforms_naive(arr, n), expect)


COUNTER = st.one_of(st.sampled_from([0, 1, 2**64 - 1, 2**64 - 2, 2**64 - 5]), U64)


@settings(max_examples=100, deadline=None)
@given(key=st.tuples(KEY_WORD, KEY_WORD), counter=st.tuples(COUNTER, COUNTER, COUNTER, COUNTER),
       n=st.integers(0, 40))
def test_kernel_from_any_counter_carries_like_numpy(key, counter, n):
    # a stream advanced to near 2**64 (or 2**256) blocks: the counter increments carry across words
    keys = np.array([key], np.uint64)
    ctr = np.array(counter, np.uint64)
    expect = numpy_uniforms(keys, n, ctr)
    assert_identical(philox_uniforms(keys, n, ctr), expect)
    assert_identical(philox_uniforms_naive(keys, n, ctr), expect)


@pytest.mark.parametrize("counter", [[2**64 - 1, 0, 0, 0], [2**64 - 2, 2**64 - 1, 2**64 - 1, 0],
                                     [2**64 - 1] * 4, [3, 2**64 - 1, 0, 7]])
def test_counter_carries(counter):
    keys = np.array([[0, 0], [2**64 - 1, 2**64 - 1], [12345, 2**63]], np.uint64)
    ctr = np.array(counter, np.uint64)
    for n in (1, 4, 5, 9, 33):
        assert_identical(philox_uniforms(keys, n, ctr), numpy_uniforms(keys, n, ctr))


def test_keyed_rows_are_the_keyed_rngs():
    # keys derived like SeedSequence([seed, purpose, step, row]), streams as keyed_rng's, long enough for many blocks
    rows = list(range(40)) + [2**32 + 3, 2**40]
    for prefix in ((0, PURPOSE_DROPOUT, 0), (2**40 + 7, PURPOSE_DROP_PATH, 123456)):
        keys = philox_keys(prefix, rows)
        got = philox_uniforms(keys, 257)
        for i, r in enumerate(rows):
            assert got[i].tobytes() == keyed_rng(*prefix, r).random(257).tobytes()


def test_writes_only_the_rows_and_columns_asked():
    keys = np.array([[1, 2], [3, 4]], np.uint64)
    out = np.full((2, 7), -1.0)
    philox_uniforms_into(keys, np.zeros(4, np.uint64), out)
    assert_identical(out, numpy_uniforms(keys, 7))
    assert philox_uniforms(keys, 0).shape == (2, 0) and philox_uniforms(np.empty((0, 2), np.uint64), 5).shape == (0, 5)
    with pytest.raises(ValueError):
        philox_uniforms(np.zeros((2, 3), np.uint64), 4)
    with pytest.raises(ValueError):
        philox_uniforms(keys, -1)


# ---- plan.masks: byte for byte the masks of the generator-per-row implementation -----------------------

def old_masks(plan, step, rows, resolved, dtype):
    """plan.masks as it was: one Generator per row and purpose."""
    rows = list(range(*rows.indices(plan.batch_size))) if isinstance(rows, slice) else [int(r) for r in rows]
    blocks = [b for b in resolved.blocks if b.residual]
    out = {}
    active = [(i, b) for i, b in enumerate(blocks) if b.drop_path_rate > 0]
    if active:
        u = np.stack([keyed_rng(plan.seed, PURPOSE_DROP_PATH, step, r).random(len(blocks)) for r in rows])
        for i, b in active:
            out[f"{b.name}.drop_path"] = (u[:, i] >= b.drop_path_rate).astype(dtype)
    if resolved.classifier.dropout > 0:
        u = np.stack([keyed_rng(plan.seed, PURPOSE_DROPOUT, step, r).random(resolved.classifier.in_features)
                      for r in rows])
        out["classifier.dropout"] = (u >= resolved.classifier.dropout).astype(dtype)
    return out


def default_plan(seed, drop_path=0.2, num_train=1438):
    """The default run's plan (nano, its paper schedule, training-cpu; 1438 digits), drop path on."""
    doc = json.loads(load_preset("efficientnetv2-nano").model_dump_json())
    doc["conventions"]["stochastic_depth"]["rate"] = drop_path
    return TrainingPlan(parse_obj(doc), load_preset("progressive-efficientnetv2-nano-paper"),
                        load_preset("training-cpu"), num_train, seed=seed)


@pytest.mark.parametrize("seed", [0, 5, 2**40 + 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masks_are_the_old_masks(seed, dtype):
    plan = default_plan(seed)
    assert plan_module._philox_kernel() is not None  # this process has Numba: the kernel path is the one tested
    seen = set()
    for step in (0, 1, 399, 400, 877, 1199):
        resolved = plan.stage_resolved(plan.stage_at(step))
        for rows in (slice(0, 64), slice(32, 64), slice(16, 48), [63, 0, 5, 5]):
            got, expect = plan.masks(step, rows, resolved, dtype), old_masks(plan, step, rows, resolved, dtype)
            assert got.keys() == expect.keys()
            for name in got:
                assert_identical(got[name], expect[name])
            seen.update(got)
    assert "classifier.dropout" in seen and any(k.endswith(".drop_path") for k in seen)
    empty = plan.masks(1199, range(0), plan.stage_resolved(plan.stage_at(1199)), dtype)
    assert len(empty) >= 2 and all(m.shape[0] == 0 and m.dtype == dtype for m in empty.values())


def test_masks_without_the_kernel_are_the_same(monkeypatch):
    plan = default_plan(3)
    resolved = plan.stage_resolved(plan.stage_at(900))
    fast = plan.masks(900, slice(32, 64), resolved)
    monkeypatch.delitem(sys.modules, "numba")  # as in a process without Numba
    assert plan_module._philox_kernel() is None
    slow = plan.masks(900, slice(32, 64), resolved)
    assert fast.keys() == slow.keys() and len(fast) >= 2
    for name in fast:
        assert_identical(fast[name], slow[name])
    assert all(m.shape[0] == 0 for m in plan.masks(900, range(0), resolved).values())
