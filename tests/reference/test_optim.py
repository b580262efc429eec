"""Optimiser and EMA updates against steps worked out by hand on scalars (docs/internals.md)."""

import math

import numpy as np
import pytest

from effv2_spec.documents import parse_obj
from effv2_spec.resolve import resolve
from effv2_spec.presets import load as load_preset
from effv2_spec.training import EMA, TrainingConfig, learning_rate_at
from effv2_reference.ema import WeightEMA, ema_decay
from effv2_reference.optim import build_optimizer

RESOLVED = resolve(load_preset("efficientnetv2-nano"))
CONV = "stem.conv.weight"        # role conv_kernel
GAMMA = "stem.bn.weight"         # role bn_gamma
BIAS = "classifier.bias"         # role dense_bias


def config(optimizer: dict, rate=0.0, applies_to=None, **extra) -> TrainingConfig:
    wd = {"rate": rate}
    if applies_to is not None:
        wd["applies_to"] = applies_to
    return parse_obj({"kind": "training", "optimizer": optimizer, "weight_decay": wd, **extra})


def run(cfg, w0: dict, grads: list[dict], lrs: list[float]) -> dict:
    opt = build_optimizer(cfg, RESOLVED)
    params = {k: np.array([v], dtype=np.float64) for k, v in w0.items()}
    held = dict(params)
    for g, lr in zip(grads, lrs):
        out = opt.step(params, {k: np.array([v]) for k, v in g.items()}, lr)
        assert out is None
    for k in params:
        assert params[k] is held[k]  # updated in place, as ReferenceModel.params needs
    return {k: float(v[0]) for k, v in params.items()}


def test_roles_from_the_resolved_table():
    assert RESOLVED.param(CONV).role == "conv_kernel"
    assert RESOLVED.param(GAMMA).role == "bn_gamma"
    assert RESOLVED.param(BIAS).role == "dense_bias"


# ---- SGD ---------------------------------------------------------------------------------------
def test_sgd_plain():
    cfg = config({"type": "sgd", "momentum": 0.0})
    # w = 1 - 0.1 * 0.5 = 0.95; then 0.95 - 0.1 * 0.5 = 0.90
    assert run(cfg, {CONV: 1.0}, [{CONV: 0.5}] * 2, [0.1, 0.1])[CONV] == pytest.approx(0.90, abs=1e-15)


def test_sgd_momentum():
    cfg = config({"type": "sgd", "momentum": 0.9, "nesterov": False})
    # v1 = 0.5, w1 = 1 - 0.05 = 0.95; v2 = 0.45 + 0.25 = 0.70, w2 = 0.95 - 0.07 = 0.88
    out = run(cfg, {CONV: 1.0}, [{CONV: 0.5}, {CONV: 0.25}], [0.1, 0.1])
    assert out[CONV] == pytest.approx(0.88, abs=1e-15)


def test_sgd_nesterov():
    cfg = config({"type": "sgd", "momentum": 0.9, "nesterov": True})
    # v1 = 0.5, w1 = 1 - 0.1 * (0.5 + 0.45) = 0.905; v2 = 0.70, w2 = 0.905 - 0.1 * (0.25 + 0.63) = 0.817
    out = run(cfg, {CONV: 1.0}, [{CONV: 0.5}, {CONV: 0.25}], [0.1, 0.1])
    assert out[CONV] == pytest.approx(0.817, abs=1e-15)


def test_sgd_weight_decay_by_role():
    cfg = config({"type": "sgd", "momentum": 0.0}, rate=0.01)  # default roles: kernels only
    # conv kernel: g = 0.5 + 0.01 * 2 = 0.52, w = 2 - 0.052 = 1.948; gamma and bias: not decayed, 1.95
    out = run(cfg, {CONV: 2.0, GAMMA: 2.0, BIAS: 2.0}, [{CONV: 0.5, GAMMA: 0.5, BIAS: 0.5}], [0.1])
    assert out[CONV] == pytest.approx(1.948, abs=1e-15)
    assert out[GAMMA] == pytest.approx(1.95, abs=1e-15)
    assert out[BIAS] == pytest.approx(1.95, abs=1e-15)
    cfg = config({"type": "sgd", "momentum": 0.0}, rate=0.01, applies_to=["bn_gamma"])
    out = run(cfg, {CONV: 2.0, GAMMA: 2.0}, [{CONV: 0.5, GAMMA: 0.5}], [0.1])
    assert out[CONV] == pytest.approx(1.95, abs=1e-15)
    assert out[GAMMA] == pytest.approx(1.948, abs=1e-15)


def test_weight_decay_enters_the_momentum():
    # coupled L2 is part of the gradient, so the buffer accumulates it: v1 = 0.52, w1 = 2 - 0.052 = 1.948;
    # g2 = 0.5 + 0.01 * 1.948 = 0.51948, v2 = 0.468 + 0.51948 = 0.98748, w2 = 1.948 - 0.098748 = 1.849252
    cfg = config({"type": "sgd", "momentum": 0.9}, rate=0.01)
    out = run(cfg, {CONV: 2.0}, [{CONV: 0.5}] * 2, [0.1, 0.1])
    assert out[CONV] == pytest.approx(1.849252, abs=1e-13)


def test_gradient_clipping_by_global_norm():
    cfg = config({"type": "sgd", "momentum": 0.0}, gradient_clip_norm=1.0)
    # global norm of (3, 4) is 5 -> scaled to (0.6, 0.8); lr 1
    out = run(cfg, {CONV: 0.0, BIAS: 0.0}, [{CONV: 3.0, BIAS: 4.0}], [1.0])
    assert out[CONV] == pytest.approx(-0.6, abs=1e-15) and out[BIAS] == pytest.approx(-0.8, abs=1e-15)


def test_grads_are_not_mutated():
    cfg = config({"type": "sgd", "momentum": 0.9}, rate=0.1)
    opt = build_optimizer(cfg, RESOLVED)
    g = np.array([0.5])
    opt.step({CONV: np.array([1.0])}, {CONV: g}, 0.1)
    assert g[0] == 0.5


# ---- RMSProp -----------------------------------------------------------------------------------
def rms(placement, init, lr_in_momentum):
    return {"type": "rmsprop", "decay": 0.9, "momentum": 0.9, "eps": 1e-3, "eps_placement": placement,
            "initial_accumulator": init, "lr_in_momentum": lr_in_momentum}


def test_rmsprop_tf_convention_one_step():
    # ms = 0.9 * 1 + 0.1 * 0.25 = 0.925; d = sqrt(0.926) = 0.96228893790...; w = 1 - 0.1 * 0.5 / d = 0.94804055...
    out = run(config(rms("inside_sqrt", 1.0, True)), {CONV: 1.0}, [{CONV: 0.5}], [0.1])
    assert out[CONV] == pytest.approx(1 - 0.05 / 0.9622889378975527, abs=1e-12)
    assert out[CONV] == pytest.approx(0.9480406, abs=1e-7)


def test_rmsprop_pytorch_convention_one_step():
    # ms = 0 + 0.1 * 0.25 = 0.025; d = sqrt(0.025) + 1e-3 = 0.1591138830...; w = 1 - 0.1 * 0.5 / d = 0.68575966...
    out = run(config(rms("outside_sqrt", 0.0, False)), {CONV: 1.0}, [{CONV: 0.5}], [0.1])
    assert out[CONV] == pytest.approx(1 - 0.05 / 0.15911388300841897, abs=1e-12)
    assert out[CONV] == pytest.approx(0.6857597, abs=1e-7)


@pytest.mark.parametrize("placement", ["inside_sqrt", "outside_sqrt"])
@pytest.mark.parametrize("init", [0.0, 1.0])
@pytest.mark.parametrize("lr_in_momentum", [True, False])
def test_rmsprop_two_steps_all_conventions(placement, init, lr_in_momentum):
    g1, g2, lr1, lr2, eps = 0.5, 0.25, 0.1, 0.05, 1e-3
    ms1 = 0.9 * init + 0.1 * g1 ** 2
    ms2 = 0.9 * ms1 + 0.1 * g2 ** 2
    den = (lambda ms: math.sqrt(ms + eps)) if placement == "inside_sqrt" else (lambda ms: math.sqrt(ms) + eps)
    d1, d2 = den(ms1), den(ms2)
    if lr_in_momentum:   # mom1 = lr1 g1/d1; mom2 = 0.9 mom1 + lr2 g2/d2; w -= mom each step
        w2 = 1.0 - lr1 * g1 / d1 - (0.9 * lr1 * g1 / d1 + lr2 * g2 / d2)
    else:                # buf1 = g1/d1; buf2 = 0.9 buf1 + g2/d2; w -= lr * buf each step
        w2 = 1.0 - lr1 * g1 / d1 - lr2 * (0.9 * g1 / d1 + g2 / d2)
    out = run(config(rms(placement, init, lr_in_momentum)), {CONV: 1.0}, [{CONV: g1}, {CONV: g2}], [lr1, lr2])
    assert out[CONV] == pytest.approx(w2, abs=1e-14)


def test_lr_in_momentum_matters_only_when_lr_changes():
    args = ({CONV: 1.0}, [{CONV: 0.5}, {CONV: 0.25}])
    same_tf = run(config(rms("inside_sqrt", 1.0, True)), *args, [0.1, 0.1])[CONV]
    same_pt = run(config(rms("inside_sqrt", 1.0, False)), *args, [0.1, 0.1])[CONV]
    assert same_tf == pytest.approx(same_pt, abs=1e-15)
    tf = run(config(rms("inside_sqrt", 1.0, True)), *args, [0.1, 0.05])[CONV]
    pt = run(config(rms("inside_sqrt", 1.0, False)), *args, [0.1, 0.05])[CONV]
    # they differ by 0.9 * (lr1 - lr2) * g1 / d1 = 0.9 * 0.05 * 0.5 / sqrt(0.926)
    assert pt - tf == pytest.approx(0.9 * 0.05 * 0.5 / math.sqrt(0.926), abs=1e-14)


def test_state_dict_round_trip_continues_identically():
    cfg = config(rms("inside_sqrt", 1.0, True), rate=0.01)
    rng = np.random.default_rng(0)
    grads = [{CONV: rng.normal(size=3), BIAS: rng.normal(size=3)} for _ in range(3)]
    a = build_optimizer(cfg, RESOLVED)
    pa = {CONV: np.ones(3), BIAS: np.ones(3)}
    for g in grads:
        a.step(pa, g, 0.1)
    b = build_optimizer(cfg, RESOLVED)
    pb = {CONV: np.ones(3), BIAS: np.ones(3)}
    b.step(pb, grads[0], 0.1)
    c = build_optimizer(cfg, RESOLVED)
    c.load_state_dict(b.state_dict())
    for g in grads[1:]:
        c.step(pb, g, 0.1)
    assert c.steps == 3
    for k in pa:
        assert np.array_equal(pa[k], pb[k])


def test_float32_stays_float32():
    opt = build_optimizer(config(rms("inside_sqrt", 1.0, True)), RESOLVED)
    p = {CONV: np.ones(4, dtype=np.float32)}
    opt.step(p, {CONV: np.full(4, 0.5, dtype=np.float32)}, 0.1)
    assert p[CONV].dtype == np.float32 and opt.state["ms"][CONV].dtype == np.float32


# ---- learning rate -----------------------------------------------------------------------------
def test_learning_rate_warmup_and_cosine():
    cfg = TrainingConfig.model_validate({"batch_size": 64, "learning_rate": {
        "base": 0.2, "reference_batch_size": 256, "warmup_epochs": 1.0, "decay": {"type": "cosine"}}})
    # peak 0.2 * 64 / 256 = 0.05; warm-up over 10 steps; cosine at step 50 of 100 -> 0.025
    assert learning_rate_at(cfg, 0, 10, 100) == 0.0
    assert learning_rate_at(cfg, 5, 10, 100) == pytest.approx(0.025)
    assert learning_rate_at(cfg, 50, 10, 100) == pytest.approx(0.025)


# ---- EMA ---------------------------------------------------------------------------------------
def test_ema_without_warmup():
    ema = WeightEMA(EMA(decay=0.5, num_updates_warmup=False), {"w": np.array([1.0])})
    ema.update({"w": np.array([3.0])}, 1)   # 0.5 * 1 + 0.5 * 3 = 2
    assert ema.shadow["w"][0] == 2.0
    ema.update({"w": np.array([5.0])}, 2)   # 0.5 * 2 + 0.5 * 5 = 3.5
    assert ema.shadow["w"][0] == 3.5


def test_ema_with_num_updates_warmup():
    cfg = EMA(decay=0.9999, num_updates_warmup=True)
    assert ema_decay(cfg, 1) == pytest.approx(2 / 11)          # min(0.9999, (1 + 1) / (10 + 1))
    assert ema_decay(cfg, 10 ** 6) == 0.9999
    ema = WeightEMA(cfg, {"w": np.array([1.0])})
    ema.update({"w": np.array([3.0])}, 1)   # 2/11 * 1 + 9/11 * 3 = 29/11
    assert ema.shadow["w"][0] == pytest.approx(29 / 11, abs=1e-15)


def test_ema_state_round_trip():
    a = WeightEMA(EMA(decay=0.9), {"w": np.zeros(2)})
    a.update({"w": np.ones(2)}, 5)
    b = WeightEMA(EMA(decay=0.9), {"w": np.zeros(2)})
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.shadow["w"], b.shadow["w"])


def _sgd_written_out(w, v, grads, lr, rate, m, nesterov, t):
    """The docs' NumPy sequence, in place on `w` and `v` (only CONV decays), in the dtype whose type is `t`."""
    for k in w:
        g = grads[k] + t(rate) * w[k] if k == CONV else grads[k]
        v[k] *= t(m)
        v[k] += g
        w[k] -= t(lr) * (g + t(m) * v[k]) if nesterov else t(lr) * v[k]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_kernel_is_bit_identical_to_the_numpy_formula(dtype, nesterov):
    """The one-pass SGD kernel (kernels/network/sgd.py) against the NumPy sequence of the docs, written out here,
    over several steps, decayed and undecayed tensors, a non-contiguous tensor (NumPy path) alike."""
    rate, m = 1e-2, 0.9
    cfg = config({"type": "sgd", "momentum": m, "nesterov": nesterov}, rate=rate, applies_to=["conv_kernel"])
    opt = build_optimizer(cfg, RESOLVED)
    rng = np.random.default_rng(7)
    shapes = {CONV: (16, 3, 3, 3), GAMMA: (16,), BIAS: (10,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    params[BIAS] = rng.standard_normal((10, 2)).astype(dtype)[:, 0]  # strided: the NumPy path
    ref_w = {k: v.copy() for k, v in params.items()}
    ref_v = {k: np.zeros_like(v) for k, v in params.items()}
    t = np.dtype(dtype).type
    for step in range(4):
        grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
        lr = 0.05 * (step + 1)
        opt.step(params, grads, lr)
        _sgd_written_out(ref_w, ref_v, grads, lr, rate, m, nesterov, t)
        for k in params:
            assert params[k].tobytes() == ref_w[k].tobytes(), (k, step)
            assert opt.state["momentum"][k].tobytes() == ref_v[k].tobytes(), (k, step)


def _pieces_of_one_buffer(values: dict) -> dict:
    """`values` copied into consecutive pieces of one buffer, as ReferenceModel keeps its parameters."""
    flat = np.concatenate([v.reshape(-1) for v in values.values()])
    out, at = {}, 0
    for k, v in values.items():
        out[k] = flat[at:at + v.size].reshape(v.shape)
        at += v.size
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("flat_grads", [True, False])
def test_sgd_on_one_buffer_is_bit_identical_to_the_numpy_formula(dtype, nesterov, flat_grads):
    """Parameters that are pieces of one buffer (the model's) take the one-call path (every tensor in one
    kernel pass, the gradients from one buffer too when given); the same bits as the formula written out,
    across a state round trip, which gives fresh slot arrays the path must take over with their values."""
    rate, m = 1e-2, 0.9
    cfg = config({"type": "sgd", "momentum": m, "nesterov": nesterov}, rate=rate, applies_to=["conv_kernel"])
    opt = build_optimizer(cfg, RESOLVED)
    rng = np.random.default_rng(11)
    shapes = {CONV: (16, 3, 3, 3), GAMMA: (16,), BIAS: (10,), "classifier.weight": (10, 7)}
    params = _pieces_of_one_buffer({k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()})
    held = dict(params)
    ref_w = {k: v.copy() for k, v in params.items()}
    ref_v = {k: np.zeros_like(v) for k, v in params.items()}
    t = np.dtype(dtype).type
    for step in range(6):
        grads = _pieces_of_one_buffer({k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()})
        lr = 0.05 * (step + 1)
        flat = next(iter(grads.values())).base if flat_grads else None
        opt.step(params, grads, lr, flat_grads=flat)
        if step == 2:  # a resume: new slot arrays, the same values
            fresh = build_optimizer(cfg, RESOLVED)
            fresh.load_state_dict(opt.state_dict())
            opt = fresh
        _sgd_written_out(ref_w, ref_v, grads, lr, rate, m, nesterov, t)
        for k in params:
            assert params[k] is held[k]
            assert params[k].tobytes() == ref_w[k].tobytes(), (k, step)
            assert opt.state["momentum"][k].tobytes() == ref_v[k].tobytes(), (k, step)
    assert opt._flat[1] is not None  # the one-call path was the one taken


def test_only_whole_consecutive_buffers_take_the_one_call_path():
    from effv2_reference.optim import consecutive_buffer

    flat = np.arange(10.0)
    assert consecutive_buffer([flat[:4].reshape(2, 2), flat[4:]]) is flat
    assert consecutive_buffer([flat[:4], flat[5:]]) is None  # a gap
    assert consecutive_buffer([flat[4:], flat[:4]]) is None  # out of order
    assert consecutive_buffer([flat[:4]]) is None  # not all of it
    assert consecutive_buffer([flat[::2]]) is None  # strided
    assert consecutive_buffer([np.arange(3.0)]) is None and consecutive_buffer([]) is None  # no buffer behind


def test_a_subset_of_the_buffer_is_updated_tensor_by_tensor_with_the_same_bits():
    """A fine-tuning run with frozen BN steps a subset of the model's tensors (a new dict each step): not the
    whole buffer, so the tensor-by-tensor path, decided once for those tensors."""
    cfg = config({"type": "sgd", "momentum": 0.9}, rate=1e-2, applies_to=["conv_kernel"])
    rng = np.random.default_rng(5)
    shapes = {CONV: (16, 3, 3, 3), GAMMA: (16,), BIAS: (10,)}
    whole = _pieces_of_one_buffer({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})
    apart = {k: v.copy() for k, v in whole.items()}
    a, b = build_optimizer(cfg, RESOLVED), build_optimizer(cfg, RESOLVED)
    for step in range(3):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in whole.items()}
        a.step({k: whole[k] for k in (CONV, BIAS)}, grads, 0.1)
        b.step({k: apart[k] for k in (CONV, BIAS)}, grads, 0.1)
        assert a._flat[1] is None
    for k in shapes:
        assert whole[k].tobytes() == apart[k].tobytes(), k
