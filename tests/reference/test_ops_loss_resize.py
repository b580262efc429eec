"""Softmax cross-entropy (label smoothing, soft targets) and bilinear resize against closed forms and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from effv2_reference.gradcheck import gradcheck
from effv2_reference.ops import resize_bilinear, softmax_cross_entropy


def test_uniform_logits_give_log_k():
    loss, d = softmax_cross_entropy(np.zeros((4, 10)), np.array([0, 3, 9, 2]))
    assert loss == pytest.approx(math.log(10), rel=1e-14)
    expected = np.full((4, 10), 0.1)
    expected[np.arange(4), [0, 3, 9, 2]] -= 1.0
    np.testing.assert_allclose(d, expected / 4, rtol=1e-13)


def test_label_smoothing_closed_form():
    logits = np.array([[2.0, 0.0, -1.0]])
    ls = 0.1
    logp = logits[0] - math.log(sum(math.exp(v) for v in logits[0]))
    t = np.array([1 - ls + ls / 3, ls / 3, ls / 3])
    loss, _ = softmax_cross_entropy(logits, np.array([0]), label_smoothing=ls)
    assert loss == pytest.approx(-(t * logp).sum(), rel=1e-14)


def test_soft_targets_and_gradcheck():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 7)) * 3
    a, b = np.eye(7)[[1, 2, 3, 4, 5]], np.eye(7)[[6, 0, 0, 1, 2]]
    lam = 0.3
    soft = lam * a + (1 - lam) * b  # mixup targets
    loss, _ = softmax_cross_entropy(logits, soft, label_smoothing=0.1)
    la, _ = softmax_cross_entropy(logits, np.array([1, 2, 3, 4, 5]), label_smoothing=0.1)
    lb, _ = softmax_cross_entropy(logits, np.array([6, 0, 0, 1, 2]), label_smoothing=0.1)
    assert loss == pytest.approx(lam * la + (1 - lam) * lb, rel=1e-13)  # CE is linear in the targets

    def f(arr):
        return np.array(softmax_cross_entropy(arr["z"], soft, label_smoothing=0.1)[0])

    gradcheck(f, {"z": logits}, lambda arr, r: {"z": r * softmax_cross_entropy(arr["z"], soft, label_smoothing=0.1)[1]},
              rtol=1e-8)


def test_loss_rejects_bad_targets():
    with pytest.raises(ValueError, match="labels"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        softmax_cross_entropy(np.zeros((2, 3)), np.zeros((2, 4)))


def test_resize_closed_forms():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(resize_bilinear(x, 4), x)  # identity
    # halving with half-pixel centres samples exactly between pixel pairs: the 2x2 block mean
    np.testing.assert_allclose(resize_bilinear(x, 2)[0, 0], x[0, 0].reshape(2, 2, 2, 2).mean(axis=(1, 3)),
                               rtol=1e-15)
    up = resize_bilinear(np.array([[0.0, 4.0]]), (1, 4))  # centres map to -0.25, 0.25, 0.75, 1.25
    np.testing.assert_allclose(up, [[0.0, 1.0, 3.0, 4.0]], rtol=1e-15)
    hwc = np.random.default_rng(0).random((5, 7, 3))
    np.testing.assert_allclose(resize_bilinear(hwc, (3, 4), channels_last=True),
                               np.moveaxis(resize_bilinear(np.moveaxis(hwc, -1, 0), (3, 4)), 0, -1), rtol=1e-14)
    assert resize_bilinear(np.zeros((2, 5, 5), dtype=np.uint8), 3).dtype == np.float32


@pytest.mark.torch
@pytest.mark.parametrize("size", [(7, 9), (16, 3), (32, 32)])
def test_resize_matches_torch_bilinear(size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((2, 3, 13, 11))
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False,
                                          antialias=False).numpy()
    np.testing.assert_allclose(resize_bilinear(x, size), ref, rtol=0, atol=1e-12)
