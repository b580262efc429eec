"""build_model: canonical names and shapes for every preset, and each convention against hand formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from effv2_adapters.torch import build_model, config_from_resolved
from effv2_adapters.torch.modules import BatchNorm, conv_padding
from effv2_spec import presets
from effv2_spec.accounting import count
from effv2_spec.documents import parse_obj
from effv2_spec.resolve import resolve
from effv2_spec.rounding import conv_padding as spec_conv_padding

from effv2_train.init import initial_tensors
from shared_specs import constant_inits_flipped
from torch_testlib import manual_forward, preset, rel, tiny_spec

ARCH_PRESETS = [n for n in presets.names() if presets.kind(n) == "architecture"]


@pytest.mark.parametrize("name", ARCH_PRESETS)
def test_state_dict_is_the_canonical_table(name):
    resolved = resolve(preset(name))
    with torch.device("meta"):  # shapes only: no memory for XL / B7
        model = build_model(resolved, torch.float32, init=False)
    state = model.state_dict()
    assert list(state) == [p.name for p in resolved.params]
    assert all(tuple(state[p.name].shape) == p.shape for p in resolved.params)
    trainable = {n for n, _ in model.named_parameters()}
    assert trainable == {p.name for p in resolved.params if p.trainable}
    assert sum(p.numel() for p in model.parameters()) == count(resolved).params


def test_padding_matches_the_spec_arithmetic():
    for convention in ("tf_same", "symmetric"):
        for size in range(1, 40):
            for k in (1, 3, 5, 7):
                for s in (1, 2):
                    assert conv_padding(convention, size, k, s) == spec_conv_padding(convention, size, k, s)


@pytest.mark.parametrize("size", [(16, 16), (17, 17), (16, 19), (15, 22)])
def test_tf_same_padding_is_asymmetric_on_even_sizes(size):
    spec = tiny_spec()
    model = build_model(spec, torch.float64, seed=0).eval()
    conv = model.stem.conv
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    # TF SAME by hand: pad total max((ceil(n/s)-1)*s + k - n, 0), the extra pixel bottom/right
    pads = []
    for n in size[::-1]:
        total = max((math.ceil(n / 2) - 1) * 2 + 3 - n, 0)
        pads += [total // 2, total - total // 2]
    expected = F.conv2d(F.pad(x, pads), conv.weight, stride=2)
    assert rel(conv(x), expected) == 0.0
    assert conv(x).shape[-2:] == tuple(math.ceil(n / 2) for n in size)


def test_symmetric_padding():
    model = build_model(tiny_spec(padding="symmetric"), torch.float64, seed=0).eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    expected = F.conv2d(x, model.stem.conv.weight, stride=2, padding=1)
    assert rel(model.stem.conv(x), expected) == 0.0


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("momentum", [0.1, 1.0])
def test_batch_norm_training_and_running_update(estimator, momentum):
    bn = BatchNorm(4, 1e-3, momentum, estimator).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.1, -0.2, 0.3]))
        bn.running_mean.copy_(torch.tensor([0.5, -0.5, 0.0, 1.0]))
        bn.running_var.copy_(torch.tensor([2.0, 1.0, 0.5, 1.5]))
    rm0, rv0 = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(3, 4, 5, 2, dtype=torch.float64) * 3 + 1
    y = bn.train()(x)
    n = 3 * 5 * 2
    mean = x.mean(dim=(0, 2, 3))
    var = ((x - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))  # biased normalises, always
    expected = (x - mean[None, :, None, None]) / torch.sqrt(var + 1e-3)[None, :, None, None]
    expected = expected * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    assert rel(y, expected) < 1e-14
    v = var if estimator == "biased" else var * n / (n - 1)
    assert rel(bn.running_mean, (1 - momentum) * rm0 + momentum * mean) < 1e-14
    assert rel(bn.running_var, (1 - momentum) * rv0 + momentum * v) < 1e-14
    y_eval = bn.eval()(x)
    expected_eval = (x - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var + 1e-3)[None, :, None, None]
    expected_eval = expected_eval * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    assert rel(y_eval, expected_eval) < 1e-14


@pytest.mark.parametrize("act,formula", [
    ("silu", lambda x: x * torch.sigmoid(x)),
    ("relu", lambda x: torch.maximum(x, torch.zeros_like(x))),
    ("relu6", lambda x: torch.minimum(torch.maximum(x, torch.zeros_like(x)), torch.full_like(x, 6.0))),
    ("hard_swish", lambda x: x * torch.minimum(torch.maximum(x + 3, torch.zeros_like(x)), torch.full_like(x, 6.0)) / 6),
])
def test_activations(act, formula):
    from effv2_adapters.torch.modules import activate

    x = torch.linspace(-9, 9, 1001, dtype=torch.float64)
    assert rel(activate(act, x), formula(x)) < 1e-15
    model = build_model(tiny_spec(activation=act), torch.float64, seed=0).eval()
    assert model.stem.act == act and model.blocks[1].se.act == act


@pytest.mark.parametrize("training", [False, True])
def test_forward_matches_the_written_out_contract(training):
    spec = tiny_spec()
    model = build_model(spec, torch.float64, seed=3)
    from torch_testlib import randomize_bn

    randomize_bn(model)
    resolved = resolve(spec, 19)
    g = torch.Generator().manual_seed(0)
    masks = {f"blocks.{b.index}.drop_path": (torch.rand(2, generator=g) > 0.5).double()
             for b in resolved.blocks if b.residual and b.drop_path_rate > 0}
    assert masks, "the tiny spec must exercise drop path"
    masks["classifier.dropout"] = (torch.rand(2, 32, generator=g) > 0.3).double()
    x = torch.randn(2, 3, 19, 18, dtype=torch.float64)
    manual = manual_forward(model, x, masks, training)
    out = model.train(training)(x, masks)
    assert rel(out, manual) < 1e-12


def test_missing_masks_are_drawn_and_eval_ignores_masks():
    model = build_model(tiny_spec(), torch.float64, seed=0)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    model.eval()
    zeros = {"classifier.dropout": torch.zeros(4, 32, dtype=torch.float64)}
    assert rel(model(x, zeros), model(x)) == 0.0
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert rel(a, b) > 0  # different random masks
    torch.manual_seed(0)
    assert rel(model(x), a) == 0.0


def test_in_model_normalisation():
    spec = tiny_spec()
    doc = spec.model_dump(mode="json")
    doc["input"]["normalization"] = {"mean": [120.0, 110.0, 100.0], "std": [60.0, 50.0, 40.0], "in_model": True}
    spec_in = parse_obj(doc, type(spec))
    a = build_model(spec_in, torch.float64, seed=0).eval()
    b = build_model(spec, torch.float64, init=False).eval()
    b.load_state_dict(a.state_dict())
    assert list(a.state_dict()) == list(b.state_dict())  # constants are not state
    raw = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 255
    mean = torch.tensor([120.0, 110.0, 100.0], dtype=torch.float64)[None, :, None, None]
    std = torch.tensor([60.0, 50.0, 40.0], dtype=torch.float64)[None, :, None, None]
    assert rel(a(raw), b((raw - mean) / std)) < 1e-14


def test_seeded_init_follows_the_init_rules():
    spec = preset("efficientnetv2-s")
    resolved = resolve(spec)
    a = build_model(resolved, torch.float32, seed=7)
    b = build_model(resolved, torch.float32, seed=7)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n
    state = a.state_dict()
    for p in resolved.params:
        t = state[p.name].double()
        if p.init.kind in ("zeros", "ones"):
            assert torch.all(t == (1.0 if p.init.kind == "ones" else 0.0)), p.name
        elif p.numel >= 20000:
            std = float(t.std())
            expected = p.init.scale / math.sqrt(3) if p.init.kind == "uniform" else p.init.scale
            assert abs(std / expected - 1) < 0.05, (p.name, std, expected)


def test_constant_init_conventions_reach_the_modules():
    """Every constant rule of the table, flipped, is what the module starts from (the oracle's values);
    the random kernels are the very draws of the unflipped table: constants consume no draw."""
    resolved = resolve(tiny_spec(), 16)
    flipped = constant_inits_flipped(resolved)
    state = build_model(flipped, torch.float64, seed=5).state_dict()
    plain = build_model(resolved, torch.float64, seed=5).state_dict()
    oracle = initial_tensors(flipped, 5, "float64")
    constants = [p for p in flipped.params if p.init.kind in ("zeros", "ones")]
    se_units = sum(u.kind == "se" for u in resolved.units())
    assert len(constants) == 4 * (len(resolved.units()) - se_units) + 2 * se_units + 1  # BN 4, SE 2 biases, dense bias
    for p in flipped.params:
        if p.init.kind in ("zeros", "ones"):
            assert np.array_equal(state[p.name].numpy(), oracle[p.name]), p.name
            assert np.all(oracle[p.name] == (1.0 if p.init.kind == "ones" else 0.0)), p.name
            assert not torch.equal(state[p.name], plain[p.name]), p.name
        else:
            assert torch.equal(state[p.name], plain[p.name]), p.name


def test_config_copies_the_resolved_tables():
    resolved = resolve(preset("efficientnetv2-b3"))
    cfg = config_from_resolved(resolved)
    assert len(cfg["blocks"]) == len(resolved.blocks)
    for row, block in zip(cfg["blocks"], resolved.blocks):
        assert row["residual"] == block.residual and row["drop_path_rate"] == block.drop_path_rate
        assert [layer["name"] for layer in row["layers"]] == [u.name for u in block.layers]
    assert cfg["classifier"]["dropout"] == resolved.classifier.dropout
    assert cfg["batch_norm"] == {"eps": resolved.bn_eps, "momentum": resolved.bn_momentum,
                                 "running_var": resolved.bn_running_var}


def test_dtype_and_device_of_every_tensor():
    model = build_model(tiny_spec(), "float64", seed=0)
    assert {t.dtype for t in model.state_dict().values()} == {torch.float64}
    assert np.isfinite(model.eval()(torch.randn(1, 3, 16, 16, dtype=torch.float64)).detach().numpy()).all()
