"""Independent check: conv, depthwise conv and train-mode BN against torch.nn.functional in float64.

The shapes are those of the efficientnetv2-nano preset's layers (stem, a fused conv, a
depthwise stride-2 conv with TF-SAME's asymmetric pad, a 1x1 projection).
"""

from __future__ import annotations

import numpy as np
import pytest

from effv2_reference.ops import (batch_norm_backward, batch_norm_train_forward, conv2d_backward, conv2d_forward,
                                 conv_pads, update_running_stats)

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.torch

LAYERS = [  # name, C, O, k, stride, depthwise, H, W
    ("stem", 3, 16, 3, 2, False, 32, 32),
    ("fused", 16, 64, 3, 2, False, 16, 16),
    ("dw_s2", 96, 96, 3, 2, True, 8, 8),
    ("dw_s1_odd", 40, 40, 3, 1, True, 5, 7),
    ("project", 160, 40, 1, 1, False, 4, 4),
]


def _torch_conv(x_nchw, w, stride, pads, groups):
    t, b, l, r = pads
    return F.conv2d(F.pad(x_nchw, (l, r, t, b)), w, stride=stride, groups=groups)


@pytest.mark.parametrize("layer", LAYERS, ids=lambda l: l[0])
@pytest.mark.parametrize("convention", ["tf_same", "symmetric"])
def test_conv_forward_backward_match_torch(layer, convention):
    _, c, o, k, s, dw, h, w = layer
    rng = np.random.default_rng(0)
    groups = c if dw else 1
    x = rng.standard_normal((2, c, h, w))  # NCHW for torch
    wt = rng.standard_normal((o, c // groups, k, k))
    pads = conv_pads(convention, (h, w), k, s)
    xt = torch.from_numpy(x).requires_grad_()
    wtt = torch.from_numpy(wt).requires_grad_()
    yt = _torch_conv(xt, wtt, s, pads, groups)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))

    y, cache = conv2d_forward(np.ascontiguousarray(x.transpose(1, 0, 2, 3)), wt, stride=s, pads=pads, groups=groups)
    dx, dwt = conv2d_backward(np.ascontiguousarray(dy.transpose(1, 0, 2, 3)), cache)
    scale = lambda a: np.abs(a).max()  # noqa: E731
    assert np.abs(y.transpose(1, 0, 2, 3) - yt.detach().numpy()).max() <= 1e-12 * scale(y)
    assert np.abs(dx.transpose(1, 0, 2, 3) - xt.grad.numpy()).max() <= 1e-12 * scale(dx)
    assert np.abs(dwt - wtt.grad.numpy()).max() <= 1e-12 * scale(dwt)


@pytest.mark.parametrize("shape", [(4, 16, 8, 8), (3, 40, 5, 7), (2, 8, 1, 1)])
def test_batch_norm_train_matches_torch(shape):
    rng = np.random.default_rng(1)
    n, c = shape[:2]
    x = rng.standard_normal(shape) * 3 + 1
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.random(c) + 0.5
    xt, gt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, gamma, beta))
    rmt, rvt = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    yt = F.batch_norm(xt, rmt, rvt, gt, bt, training=True, momentum=0.1, eps=1e-3)  # unbiased running var
    dy = rng.standard_normal(shape)
    yt.backward(torch.from_numpy(dy))

    y, cache, mean, var = batch_norm_train_forward(np.ascontiguousarray(x.transpose(1, 0, 2, 3)), gamma, beta,
                                                   eps=1e-3)
    dx, dg, db = batch_norm_backward(np.ascontiguousarray(dy.transpose(1, 0, 2, 3)), cache)
    np.testing.assert_allclose(y.transpose(1, 0, 2, 3), yt.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx.transpose(1, 0, 2, 3), xt.grad.numpy(), rtol=0, atol=1e-11)
    np.testing.assert_allclose(dg, gt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-12, atol=1e-12)
    m = n * shape[2] * shape[3]
    if m > 1:
        update_running_stats(rm, rv, mean, var, m, momentum=0.1, running_var_kind="unbiased")
        np.testing.assert_allclose(rm, rmt.numpy(), rtol=1e-13)
        np.testing.assert_allclose(rv, rvt.numpy(), rtol=1e-13)
