"""Whole-model check against an independent torch.nn.functional walk of the resolved table (float64).

The torch side below is written from docs/internals.md with torch's own ops and autograd
(no effv2 code besides the resolved table and the padding rule), so it checks the
oracle's forward, every parameter gradient, the input gradient and the BN running
statistics from outside.
"""

from __future__ import annotations

import numpy as np
import pytest

from effv2_reference.model import ReferenceModel
from effv2_spec.resolve import ConvBN
from effv2_spec.rounding import conv_padding

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.torch

ACT = {"silu": F.silu, "relu": F.relu, "relu6": F.relu6, "hard_swish": F.hardswish}


def torch_forward(r, t, x, training, masks):
    """t: dict of torch tensors (params requires_grad; buffers updated in place)."""
    act = ACT[r.activation]
    if r.normalize_in_model:
        norm = r.spec.input.normalization
        x = (x - torch.tensor(norm.mean, dtype=x.dtype)[None, :, None, None]) / \
            torch.tensor(norm.std, dtype=x.dtype)[None, :, None, None]

    def conv_bn(u, h):
        pt, pb = conv_padding(r.padding, h.shape[2], u.kernel, u.stride)
        pl, pr = conv_padding(r.padding, h.shape[3], u.kernel, u.stride)
        h = F.conv2d(F.pad(h, (pl, pr, pt, pb)), t[f"{u.name}.conv.weight"], stride=u.stride, groups=u.groups)
        p = f"{u.name}.bn"
        if training:
            mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
            n = h.shape[0] * h.shape[2] * h.shape[3]
            v = var.detach() * (n / (n - 1) if r.bn_running_var == "unbiased" else 1.0)
            m = r.bn_momentum
            t[f"{p}.running_mean"].mul_(1 - m).add_(m * mean.detach())
            t[f"{p}.running_var"].mul_(1 - m).add_(m * v)
        else:
            mean, var = t[f"{p}.running_mean"], t[f"{p}.running_var"]
        h = (h - mean[None, :, None, None]) / torch.sqrt(var + r.bn_eps)[None, :, None, None]
        h = h * t[f"{p}.weight"][None, :, None, None] + t[f"{p}.bias"][None, :, None, None]
        return act(h) if u.activation else h

    def se(u, h):
        s = h.mean(dim=(2, 3), keepdim=True)
        s = ACT[u.activation](F.conv2d(s, t[f"{u.name}.reduce.weight"], t[f"{u.name}.reduce.bias"]))
        z = F.conv2d(s, t[f"{u.name}.expand.weight"], t[f"{u.name}.expand.bias"])
        return h * (torch.sigmoid(z) if u.gate == "sigmoid" else F.relu6(z + 3) / 6)

    h = conv_bn(r.stem, x)
    for b in r.blocks:
        x_in = h
        for layer in b.layers:
            h = conv_bn(layer, h) if isinstance(layer, ConvBN) else se(layer, h)
        if b.residual:
            if training and b.drop_path_rate > 0:
                h = h * masks[f"{b.name}.drop_path"][:, None, None, None] / (1 - b.drop_path_rate)
            h = x_in + h
    f = conv_bn(r.head, h).mean(dim=(2, 3))
    if training and r.classifier.dropout > 0:
        f = f * masks["classifier.dropout"] / (1 - r.classifier.dropout)
    return F.linear(f, t["classifier.weight"], t["classifier.bias"])


def _tiny(**conv):
    from effv2_spec.documents import parse_obj
    return parse_obj({
        "kind": "architecture", "name": "tiny-torch", "num_classes": 4,
        "input": {"channels": 3, "train_image_size": 16, "eval_image_size": 16,
                  "normalization": {"mean": [100.0, 120.0, 140.0], "std": [50.0, 60.0, 70.0],
                                    "in_model": conv.pop("in_model", False)}},
        "stem": {"kernel": 3, "stride": 2, "channels": 8},
        "stages": [
            {"type": "fused_mbconv", "kernel": 3, "stride": 1, "expand_ratio": 1.0, "out_channels": 8, "repeats": 2,
             "se_ratio": 0.5},
            {"type": "fused_mbconv", "kernel": 5, "stride": 2, "expand_ratio": 2.0, "out_channels": 16, "repeats": 1},
            {"type": "mbconv", "kernel": 3, "stride": 2, "expand_ratio": 3.0, "out_channels": 16, "repeats": 2,
             "se_ratio": 0.25},
        ],
        "head": {"channels": 32, "dropout": 0.25},
        "conventions": {**conv, "stochastic_depth": {"rate": 0.4}},
    })


SPECS = {
    "nano": lambda: "efficientnetv2-nano",
    "official-tiny": lambda: _tiny(),
    "symmetric-unbiased-hard_swish-expand_project-in_model": lambda: _tiny(
        padding="symmetric", activation="hard_swish", fused_expand1="expand_project", in_model=True,
        batch_norm={"eps": 1e-5, "momentum": 0.3, "running_var": "unbiased"}),
    "relu6": lambda: _tiny(activation="relu6"),
}


def _rel(a, b, floor=0.0):
    return np.abs(a - b).max() / max(np.abs(b).max(), floor, 1e-300)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("size", [(17, 23), (32, 32)], ids=["17x23", "32x32"])
def test_model_matches_torch_functional(name, size):
    model = ReferenceModel(SPECS[name](), dtype="float64", seed=3)
    r = model.resolved
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 3, *size)) * (50 if r.normalize_in_model else 1) + (120 if r.normalize_in_model else 0)
    # perturb BN stats and affine parameters so eval mode is not the identity
    for k, v in {**model.params, **model.buffers}.items():
        if ".bn." in k:
            v[...] = np.abs(v + 0.3 * rng.standard_normal(v.shape)) if k.endswith("var") else \
                v + 0.3 * rng.standard_normal(v.shape)
    t = {k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()}

    ref_eval = torch_forward(r, t, torch.from_numpy(x), False, {}).numpy()
    assert _rel(model.forward(x), ref_eval) < 1e-12

    logits = model.forward(x, training=True)
    masks = {k: torch.from_numpy(v) for k, v in model.last_masks.items()}
    assert set(masks) == set(model.mask_names) and masks
    for k in model.params:
        t[k].requires_grad_(True)
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = torch_forward(r, t, xt, True, masks)
    assert _rel(logits, ref.detach().numpy()) < 1e-12
    proj = rng.standard_normal(logits.shape)
    (ref * torch.from_numpy(proj)).sum().backward()
    grads, dx = model.backward(proj, return_input_grad=True)
    # a BN shift that the next train-mode BN cancels has a ~0 gradient: judge it against the largest one
    top = max(np.abs(t[k].grad.numpy()).max() for k in model.params)
    worst = max((_rel(grads[k], t[k].grad.numpy(), 1e-4 * top), k) for k in model.params)
    assert worst[0] < 1e-10, worst
    assert _rel(dx, xt.grad.numpy()) < 1e-10
    for k, v in model.buffers.items():
        assert _rel(v, t[k].numpy()) < 1e-12, k
