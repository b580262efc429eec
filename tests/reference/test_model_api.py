"""ReferenceModel's public surface: tables, init rules, masks, modes, state and weights files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from effv2_reference.model import ReferenceModel
from effv2_spec import presets
from effv2_spec.documents import parse_obj
from effv2_spec.resolve import resolve
from effv2_spec.weights import WeightsError

NANO = "efficientnetv2-nano"


@pytest.fixture(scope="module")
def nano():
    return ReferenceModel(NANO, dtype="float64", seed=0)


def test_tables_follow_the_resolved_params(nano):
    r = resolve(presets.load(NANO))
    assert {p.name: p.shape for p in r.params if p.trainable} == {k: v.shape for k, v in nano.params.items()}
    assert {p.name: p.shape for p in r.params if not p.trainable} == {k: v.shape for k, v in nano.buffers.items()}
    assert all(k.endswith(("running_mean", "running_var")) for k in nano.buffers)
    assert all(v.dtype == np.float64 for v in {**nano.params, **nano.buffers}.values())


def test_init_rules():
    model = ReferenceModel("efficientnetv2-s", dtype="float32", seed=7)
    w = model.params["head.conv.weight"]  # normal, std sqrt(2 / fan_out), fan_out = 1 * 1 * 1280
    assert w.std() == pytest.approx(math.sqrt(2 / 1280), rel=0.01) and abs(w.mean()) < 1e-3
    dw = model.params["blocks.39.dw.conv.weight"]  # depthwise: fan_out = k * k (official)
    assert dw.std() == pytest.approx(math.sqrt(2 / 9), rel=0.02)
    cls = model.params["classifier.weight"]  # uniform(-1/sqrt(out), 1/sqrt(out))
    bound = 1 / math.sqrt(1000)
    assert np.abs(cls).max() <= bound and np.abs(cls).max() > 0.99 * bound
    assert cls.std() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    assert not model.params["classifier.bias"].any() and not model.params["blocks.10.se.reduce.bias"].any()
    assert (model.params["stem.bn.weight"] == 1).all() and (model.buffers["stem.bn.running_var"] == 1).all()
    # same seed, same draws in both dtypes; another seed differs
    w64 = ReferenceModel(NANO, dtype="float64", seed=7).params["stem.conv.weight"]
    np.testing.assert_array_equal(ReferenceModel(NANO, dtype="float32", seed=7).params["stem.conv.weight"],
                                  w64.astype(np.float32))
    assert not np.array_equal(ReferenceModel(NANO, dtype="float64", seed=8).params["stem.conv.weight"], w64)


def test_truncated_normal_init_stays_within_two_std():
    doc = presets.load(NANO).model_dump(mode="json")
    doc["conventions"]["init"]["conv"] = "truncated_normal_fan_out"
    model = ReferenceModel(parse_obj(doc), dtype="float64")
    entry = model.resolved.param("head.conv.weight")
    w = model.params["head.conv.weight"]
    assert entry.init.kind == "truncated_normal"
    assert np.abs(w).max() <= 2 * entry.init.scale
    # the widened scale keeps the variance at 2 / fan_out (fan_out = 256 here)
    assert w.std() == pytest.approx(math.sqrt(2 / 256), rel=0.03)


def test_eval_forward_leaves_state_alone_and_its_tape_is_used_once(nano):
    x = np.random.default_rng(0).standard_normal((2, 3, 17, 23))
    before = {k: v.copy() for k, v in nano.buffers.items()}
    logits = nano.forward(x)
    assert logits.shape == (2, 10) and logits.dtype == np.float64
    assert nano.last_masks == {}
    assert all(np.array_equal(before[k], v) for k, v in nano.buffers.items())
    nano.backward(np.ones((2, 10)))  # eval-mode gradients: checked in test_bn_groups.py
    with pytest.raises(RuntimeError, match="call forward"):
        nano.backward(np.ones((2, 10)))
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\)"):
        nano.forward(np.zeros((2, 4, 8, 8)))


def test_masks_recorded_replayed_and_validated():
    model = ReferenceModel(NANO, dtype="float64", seed=0)
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32))
    names = set(model.mask_names)
    assert "classifier.dropout" in names and any(n.endswith(".drop_path") for n in names)
    assert names == {f"blocks.{b.index}.drop_path" for b in model.resolved.blocks
                     if b.residual and b.drop_path_rate > 0} | {"classifier.dropout"}
    state = model.state_dict()
    first = model.forward(x, training=True)
    masks = dict(model.last_masks)
    assert masks.keys() == names and masks["classifier.dropout"].shape == (4, 256)
    assert all(m.shape == (4,) for k, m in masks.items() if k.endswith("drop_path"))
    assert all(set(np.unique(m)) <= {0.0, 1.0} for m in masks.values())
    model.load_state_dict(state)  # same running stats; the batch statistics do not depend on them anyway
    again = model.forward(x, training=True, masks=masks)
    np.testing.assert_array_equal(first, again)
    assert all(np.array_equal(model.last_masks[k], masks[k]) for k in names)
    with pytest.raises(ValueError, match="unknown mask"):
        model.forward(x, training=True, masks={"blocks.0.dropout": np.ones(4)})
    with pytest.raises(ValueError, match="expected shape"):
        model.forward(x, training=True, masks={"classifier.dropout": np.ones(4)})
    # dropped samples: all-zero drop-path masks turn those residual blocks into identities
    zero = {k: np.zeros(4) for k in names if k.endswith("drop_path")}
    ones = {"classifier.dropout": np.ones((4, 256))}
    model.forward(x, training=True, masks={**zero, **ones})
    assert model.last_masks.keys() == names


def test_input_gradient_only_when_asked(monkeypatch):
    """Training never uses the input's gradient: without return_input_grad the stem's backward skips it
    (its col2im and GEMM), and every parameter gradient keeps its bits."""
    from effv2_reference.ops import conv

    model = ReferenceModel(NANO, dtype="float32", seed=0)
    x = np.random.default_rng(3).standard_normal((4, 3, 24, 24)).astype(np.float32)
    dlogits = np.random.default_rng(4).standard_normal((4, 10)).astype(np.float32)
    state = model.state_dict()
    model.forward(x, training=True)
    with_dx, dx = model.backward(dlogits, return_input_grad=True)
    assert dx.shape == x.shape and np.all(np.isfinite(dx)) and np.any(dx != 0)
    scattered = []
    real_col2im = conv.col2im
    monkeypatch.setattr(conv, "col2im", lambda dcols, shape, *a, **k: scattered.append(shape) or
                        real_col2im(dcols, shape, *a, **k))
    model.load_state_dict(state)
    model.forward(x, training=True, masks=dict(model.last_masks))
    grads = model.backward(dlogits)
    assert grads.keys() == with_dx.keys()
    assert all(np.array_equal(grads[k], with_dx[k]) for k in grads)
    assert scattered and all(shape[0] != 3 for shape in scattered)  # k x k convs inside, never the 3-channel input


def test_training_step_updates_running_stats_closed_form():
    model = ReferenceModel(NANO, dtype="float64", seed=0)
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 20))
    model.forward(x, training=True)
    # stem by hand: TF SAME for 3x3 stride 2 on 16 and 20 pads (0, 1) on each axis
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
    w = model.params["stem.conv.weight"]
    y = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + 15:2, j:j + 19:2], w[:, :, i, j])
            for i in range(3) for j in range(3))
    assert y.shape == (3, 16, 8, 10)
    np.testing.assert_allclose(model.buffers["stem.bn.running_mean"], 0.1 * y.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(model.buffers["stem.bn.running_var"], 0.9 + 0.1 * y.var(axis=(0, 2, 3)),
                               rtol=1e-12)  # biased (official)


def test_state_dict_load_and_errors(nano):
    sd = nano.state_dict()
    assert sd.keys() == {p.name for p in nano.resolved.params}
    sd["stem.conv.weight"] += 1.0
    assert not np.array_equal(sd["stem.conv.weight"], nano.params["stem.conv.weight"])  # a copy
    other = ReferenceModel(NANO, dtype="float32", seed=5)
    other.load_state_dict(sd)
    np.testing.assert_array_equal(other.params["stem.conv.weight"], sd["stem.conv.weight"].astype(np.float32))
    assert other.params["stem.conv.weight"].dtype == np.float32
    bad = dict(sd)
    del bad["head.bn.running_var"]
    bad["stem.conv.weight"] = np.zeros((1, 2, 3, 3))
    bad["extra.weight"] = np.zeros(1)
    with pytest.raises(WeightsError) as err:
        other.load_state_dict(bad)
    msg = str(err.value)
    assert "head.bn.running_var" in msg and "stem.conv.weight" in msg and "extra.weight" in msg


def test_save_and_load_roundtrip(tmp_path, nano):
    path = tmp_path / "nano.safetensors"
    nano.save(path)
    loaded = ReferenceModel.load(path)
    assert loaded.dtype == np.float64 and loaded.resolved.spec == nano.resolved.spec
    for k, v in nano.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    np.testing.assert_array_equal(loaded.forward(x), nano.forward(x))
    assert ReferenceModel.load(path, NANO, dtype="float32").dtype == np.float32
    with pytest.raises(WeightsError, match="differs"):
        ReferenceModel.load(path, "efficientnetv2-micro")


def test_float32_agrees_with_float64_on_odd_sizes():
    m64 = ReferenceModel(NANO, dtype="float64", seed=0)
    m32 = ReferenceModel(NANO, dtype="float32", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 3, 17, 23))
    masks = None
    for training in (False, True):
        a = m64.forward(x, training=training)
        if training:
            masks = m64.last_masks
        b = m32.forward(x, training=training, masks=masks)
        assert b.dtype == np.float32
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    g64, g32 = m64.backward(np.ones_like(a)), m32.backward(np.ones((4, 10), np.float32))
    for k in g64:
        assert np.abs(g64[k] - g32[k]).max() <= 1e-3 * max(np.abs(g64[k]).max(), 1e-3), k


@pytest.mark.parametrize("name", [n for n in presets.names() if presets.kind(n) == "architecture"])
def test_every_preset_runs_at_small_input(name):
    model = ReferenceModel(name, dtype="float32", seed=0)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    logits = model.forward(x)
    assert logits.shape == (1, model.resolved.num_classes) and np.isfinite(logits).all()
    if name in ("efficientnetv2-s", "efficientnetv2-xl", "efficientnet-b0"):
        x2 = np.random.default_rng(1).standard_normal((2, 3, 45, 64)).astype(np.float32)
        out = model.forward(x2, training=True)
        grads = model.backward(np.ones_like(out) / out.size)
        assert grads.keys() == model.params.keys() and all(np.isfinite(g).all() for g in grads.values())
