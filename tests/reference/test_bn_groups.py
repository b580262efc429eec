"""BN statistics groups, frozen BN and eval-mode backward in the oracle model.

The group tests need no formula from the implementation: a forward with groups of G
samples must be the G-sized sub-batches run through separate copies of the model (same
masks, sliced), its gradients the sum of theirs, and its running statistics the mean of
theirs (each copy makes one momentum update with its group's statistics, so the mean of
the copies is r = (1 - m) r + m * mean over groups, the documented rule). Frozen-BN and
eval-mode gradients are checked against central differences in float64 at odd sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from effv2_reference.gradcheck import model_gradcheck
from effv2_reference.model import ReferenceModel
from effv2_spec import strategies as st_effv2

from test_model_gradcheck import half_masks, tiny_spec  # tests/reference is on sys.path (rootdir conftest)


def _rel(a, b, floor: float = 1e-300) -> float:
    """max |a - b| relative to the larger tensor's max magnitude (the conformance measure), or to
    `floor` if larger: a gradient that is zero in exact arithmetic (the shift of a BN whose output
    feeds another train-mode BN) is pure roundoff, judged against the other gradients' scale."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), floor))


def _copy(model: ReferenceModel) -> ReferenceModel:
    twin = ReferenceModel(model.resolved, dtype=str(model.dtype))
    twin.load_state_dict(model.state_dict())
    return twin


def _randomise_running_stats(model: ReferenceModel, seed: int = 0) -> None:
    """Running statistics unlike any batch's, so frozen and eval BN are visibly not train BN."""
    rng = np.random.default_rng(seed)
    for name, buf in model.buffers.items():
        buf[...] = rng.uniform(0.5, 2.0, buf.shape) if name.endswith("running_var") else rng.normal(0, 0.5, buf.shape)


@given(spec=st_effv2.architecture_specs(max_stages=2, max_channels=6, max_repeats=2), size=st.integers(2, 3),
       count=st.integers(1, 3), data=st.data())
def test_grouped_forward_equals_separate_sub_batches(spec, size, count, data):
    """`count` groups of `size` samples, against `count` model copies fed one group each."""
    n = size * count
    model = ReferenceModel(spec, dtype="float64", seed=0)
    _randomise_running_stats(model)
    subs = [_copy(model) for _ in range(count)]
    x = data.draw(st_effv2.inputs(spec, batch=n), label="x")
    dlogits = np.random.default_rng(data.draw(st_effv2.seeds(), label="dseed")).standard_normal(
        (n, spec.num_classes))

    logits = model.forward(x, training=True, bn_group_size=size)
    grads, dx = model.backward(dlogits, return_input_grad=True)
    masks = model.last_masks  # drawn for the whole batch, sliced per group below
    total = {k: np.zeros_like(g) for k, g in grads.items()}
    for j, sub in enumerate(subs):
        part = slice(j * size, (j + 1) * size)
        sub_logits = sub.forward(x[part], training=True, masks={k: m[part] for k, m in masks.items()})
        sub_grads, sub_dx = sub.backward(dlogits[part], return_input_grad=True)
        assert _rel(logits[part], sub_logits) < 1e-10
        assert _rel(dx[part], sub_dx) < 1e-8
        for k, g in sub_grads.items():
            total[k] += g
    # roundoff only (BLAS blocking differs between batch sizes), but amplified by cancellation: the
    # weight gradient of a conv fed by raw pixels (~128 +- 64) feeding train-mode BN sums terms
    # whose mean BN removes; 1e-8 leaves room for that and still sees a missing or extra term
    floor = 1e-6 * max(np.abs(g).max() for g in grads.values())
    assert {k: _rel(grads[k], total[k], floor) for k in grads} == pytest.approx({k: 0.0 for k in grads}, abs=1e-8)
    for name, buf in model.buffers.items():  # scale ~1 (see test_grouped_float32_matches_float64)
        assert _rel(buf, np.mean([sub.buffers[name] for sub in subs], axis=0), 1.0) < 1e-12, name


def test_group_of_whole_batch_is_the_default_bit_for_bit():
    spec = tiny_spec()
    a, b = ReferenceModel(spec, dtype="float64", seed=2), ReferenceModel(spec, dtype="float64", seed=2)
    x = np.random.default_rng(0).standard_normal((4, 3, 17, 15))
    masks = half_masks(a, 4)
    la, lb = a.forward(x, training=True, masks=masks), b.forward(x, training=True, masks=masks, bn_group_size=4)
    np.testing.assert_array_equal(la, lb)
    ga, gb = a.backward(np.ones_like(la)), b.backward(np.ones_like(lb))
    assert all(np.array_equal(ga[k], gb[k]) for k in ga)
    assert all(np.array_equal(a.buffers[k], b.buffers[k]) for k in a.buffers)


def test_groups_change_the_numbers():
    """A grouped step differs from a whole-batch step (else the property test above proves nothing)."""
    spec = tiny_spec(drop=0.0, dropout=0.0)
    a, b = ReferenceModel(spec, dtype="float64", seed=2), ReferenceModel(spec, dtype="float64", seed=2)
    x = np.random.default_rng(0).standard_normal((4, 3, 17, 15))
    x[2:] = x[2:] * 3.0 + 1.0  # the second group has other statistics
    assert _rel(a.forward(x, training=True), b.forward(x, training=True, bn_group_size=2)) > 1e-2
    assert _rel(a.buffers["stem.bn.running_var"], b.buffers["stem.bn.running_var"]) > 1e-3


@pytest.mark.parametrize("bad,match", [
    (3, r"bn_group_size 3 must divide the batch size 4"),
    (8, r"bn_group_size 8 must divide the batch size 4"),
    (0, r"bn_group_size must be a positive int or None, got 0"),
    (True, r"bn_group_size must be a positive int or None, got True"),
    (2.0, r"bn_group_size must be a positive int or None, got 2.0"),
])
def test_bad_group_size_is_refused(bad, match):
    model = ReferenceModel(tiny_spec(), dtype="float64")
    before = model.state_dict()
    with pytest.raises(ValueError, match=match):
        model.forward(np.zeros((4, 3, 16, 16)), training=True, bn_group_size=bad)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_grouped_gradcheck_odd_sizes():
    spec = tiny_spec(running_var="unbiased")
    model = ReferenceModel(spec, dtype="float64", seed=1)
    x = np.random.default_rng(3).standard_normal((4, 3, 17, 13))
    errors = model_gradcheck(model, x, masks=half_masks(model, 4), max_entries=4, bn_group_size=2)
    assert set(errors) == set(model.params) | {"input"} and max(errors.values()) < 1e-6


# ---- frozen BN -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(17, 23), (15, 16)])
def test_frozen_bn_gradcheck_and_running_stats_untouched(size):
    model = ReferenceModel(tiny_spec(running_var="unbiased"), dtype="float64", seed=1)
    _randomise_running_stats(model, seed=4)
    before = {k: v.copy() for k, v in model.buffers.items()}
    x = np.random.default_rng(5).standard_normal((3, 3, *size))
    errors = model_gradcheck(model, x, masks=half_masks(model, 3), max_entries=4, frozen_bn=True)
    assert set(errors) == set(model.params) | {"input"} and max(errors.values()) < 1e-6
    assert all(np.array_equal(before[k], v) for k, v in model.buffers.items())
    # gamma and beta still learn: their gradients are not zero
    model.forward(x, training=True, masks=half_masks(model, 3), frozen_bn=True)
    grads = model.backward(np.ones((3, 5)))
    assert np.abs(grads["stem.bn.weight"]).max() > 1e-6 and np.abs(grads["head.bn.bias"]).max() > 1e-6


def test_frozen_bn_is_inference_bn_with_regularisers_on():
    spec = tiny_spec(drop=0.0, dropout=0.0)
    model = ReferenceModel(spec, dtype="float64", seed=1)
    _randomise_running_stats(model)
    x = np.random.default_rng(6).standard_normal((3, 3, 16, 17))
    eval_logits = model.forward(x)
    eval_grads, eval_dx = model.backward(np.ones((3, 5)), return_input_grad=True)
    # without random regularisers a frozen-BN training forward is the eval forward, gradients too
    np.testing.assert_array_equal(model.forward(x, training=True, frozen_bn=True), eval_logits)
    grads, dx = model.backward(np.ones((3, 5)), return_input_grad=True)
    assert all(_rel(grads[k], eval_grads[k]) < 1e-13 for k in grads) and _rel(dx, eval_dx) < 1e-13
    # with them, the masks act: a dropped classifier input changes the logits
    reg = ReferenceModel(tiny_spec(dropout=0.5), dtype="float64", seed=1)
    _randomise_running_stats(reg)
    masks = half_masks(reg, 3)
    frozen = reg.forward(x, training=True, masks=masks, frozen_bn=True)
    assert reg.last_masks.keys() == set(reg.mask_names)
    assert _rel(frozen, reg.forward(x)) > 1e-3


# ---- eval-mode backward ----------------------------------------------------------------------
@pytest.mark.parametrize("case", ["official-17x23", "symmetric-unbiased-in_model-15x22"])
def test_eval_mode_gradcheck(case):
    if case.startswith("official"):
        spec, size = tiny_spec(), (17, 23)
    else:
        spec, size = tiny_spec(padding="symmetric", running_var="unbiased", in_model=True), (15, 22)
    model = ReferenceModel(spec, dtype="float64", seed=1)
    _randomise_running_stats(model, seed=7)
    x = np.random.default_rng(8).standard_normal((3, 3, *size))
    if spec.input.normalization.in_model:
        x = x * 50 + 120
    before = model.state_dict()
    errors = model_gradcheck(model, x, max_entries=4, training=False)
    assert set(errors) == set(model.params) | {"input"} and max(errors.values()) < 1e-6
    assert model.last_masks == {}
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_eval_backward_uses_the_last_forward_once():
    model = ReferenceModel(tiny_spec(), dtype="float64", seed=1)
    rng = np.random.default_rng(9)
    x1, x2 = rng.standard_normal((2, 3, 16, 16)), rng.standard_normal((2, 3, 16, 16))
    model.forward(x2)
    _, want = model.backward(np.ones((2, 5)), return_input_grad=True)
    buf = x2.copy()
    model.forward(x1)
    model.forward(buf)
    buf[...] = 0.0  # a caller reusing its input buffer does not change what backward differentiates
    _, got = model.backward(np.ones((2, 5)), return_input_grad=True)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(RuntimeError, match="each forward's tape is used by one backward"):
        model.backward(np.ones((2, 5)))


def test_grouped_float32_matches_float64():
    spec = tiny_spec()
    m64 = ReferenceModel(spec, dtype="float64", seed=3)
    m32 = ReferenceModel(spec, dtype="float32", seed=3)
    x = np.random.default_rng(10).standard_normal((6, 3, 17, 16))
    masks = half_masks(m64, 6)
    a = m64.forward(x, training=True, masks=masks, bn_group_size=3)
    b = m32.forward(x.astype(np.float32), training=True, masks=masks, bn_group_size=3)
    assert b.dtype == np.float32 and _rel(a, b) < 1e-4
    dlogits = np.random.default_rng(11).standard_normal(a.shape)
    g64, g32 = m64.backward(dlogits), m32.backward(dlogits.astype(np.float32))
    floor = 1e-3 * max(np.abs(g).max() for g in g64.values())  # see _rel: some gradients are zero but for roundoff
    assert max(_rel(g64[k], g32[k], floor) for k in g64) < 1e-3
    # running means of a BN fed by another BN are ~0: judge them on the running variances' scale (~1)
    assert max(_rel(m64.buffers[k], m32.buffers[k], 1.0) for k in m64.buffers) < 1e-4
