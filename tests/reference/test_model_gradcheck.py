"""Whole-model gradient checks (float64, training mode, fixed masks) on tiny specs.

Together the cases cover both block types, both padding conventions, odd and non-square
sizes, stride 2, SE (in MBConv and in both fused layouts), BN in train mode with both
running-variance conventions, every activation, drop path and dropout with fixed masks,
and in-model input normalisation. A mutation test shows the check catches one wrong term.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2_reference import model as model_module
from effv2_reference import ops
from effv2_reference.gradcheck import GradcheckError, model_gradcheck
from effv2_reference.model import ReferenceModel
from effv2_spec import strategies as st_effv2
from effv2_spec.documents import parse_obj


def tiny_spec(*, padding="tf_same", activation="silu", fused_expand1="single_conv", running_var="biased",
              fused_se=None, in_model=False, drop=0.5, dropout=0.3, name="tiny"):
    fused1 = {"type": "fused_mbconv", "kernel": 3, "stride": 1, "expand_ratio": 1.0, "out_channels": 8, "repeats": 2}
    fused2 = {"type": "fused_mbconv", "kernel": 3, "stride": 2, "expand_ratio": 2.0, "out_channels": 12, "repeats": 1}
    if fused_se:
        fused1["se_ratio"] = fused2["se_ratio"] = fused_se
    return parse_obj({
        "kind": "architecture", "name": name, "num_classes": 5,
        "input": {"channels": 3, "train_image_size": 16, "eval_image_size": 16,
                  "normalization": {"mean": [120.0, 110.0, 100.0], "std": [60.0, 50.0, 70.0], "in_model": in_model}},
        "stem": {"kernel": 3, "stride": 2, "channels": 8},
        "stages": [
            fused1, fused2,
            {"type": "mbconv", "kernel": 5, "stride": 2, "expand_ratio": 2.0, "out_channels": 16, "repeats": 1,
             "se_ratio": 0.25},
            {"type": "mbconv", "kernel": 3, "stride": 1, "expand_ratio": 3.0, "out_channels": 16, "repeats": 2,
             "se_ratio": 0.5},
        ],
        "head": {"channels": 24, "dropout": dropout},
        "conventions": {"padding": padding, "activation": activation, "fused_expand1": fused_expand1,
                        "batch_norm": {"eps": 1e-3, "momentum": 0.1, "running_var": running_var},
                        "stochastic_depth": {"rate": drop}},
    })


def half_masks(model: ReferenceModel, n: int) -> dict[str, np.ndarray]:
    """Fixed masks with both kept and dropped entries, so both paths are differentiated."""
    masks = {}
    for name in model.mask_names:
        shape = (n,) if name.endswith("drop_path") else (n, model.resolved.classifier.in_features)
        m = np.ones(shape)
        m.reshape(-1)[1::3] = 0.0
        masks[name] = m
    return masks


CASES = {
    "official-silu-17x23": dict(),
    "symmetric-relu-expand_project-unbiased-in_model": dict(padding="symmetric", activation="relu",
                                                            fused_expand1="expand_project", running_var="unbiased",
                                                            in_model=True),
    "tf_same-relu6-fused_se-single_conv": dict(activation="relu6", fused_se=0.5),
    "symmetric-hard_swish-fused_se-expand_project": dict(padding="symmetric", activation="hard_swish",
                                                         fused_expand1="expand_project", fused_se=0.25),
}
SIZES = {"official-silu-17x23": (17, 23), "symmetric-relu-expand_project-unbiased-in_model": (16, 19),
         "tf_same-relu6-fused_se-single_conv": (18, 18), "symmetric-hard_swish-fused_se-expand_project": (15, 22)}


def _input(spec, size, n=3, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, 3, *size))
    return x * 50 + 120 if spec.input.normalization.in_model else x


@pytest.mark.parametrize("case", sorted(CASES))
def test_model_gradcheck(case):
    spec = tiny_spec(**CASES[case])
    model = ReferenceModel(spec, dtype="float64", seed=1)
    kinds = {b.type for b in model.resolved.blocks}
    assert kinds == {"fused_mbconv", "mbconv"} and any(b.residual for b in model.resolved.blocks)
    x = _input(spec, SIZES[case])
    errors = model_gradcheck(model, x, masks=half_masks(model, x.shape[0]), max_entries=5)
    assert set(errors) == set(model.params) | {"input"}
    assert max(errors.values()) < 1e-6


def test_gradcheck_catches_a_single_wrong_term(monkeypatch):
    """Drop one term of the BN backward (the xhat * mean(dy * xhat) correction): the check must fail."""
    real = ops.batch_norm_backward

    def wrong(dy, cache):
        dx, dg, db = real(dy, cache)
        n = dy.reshape(dy.shape[0], -1).shape[1]
        dx = dx + (cache.xhat * (dg / n)[:, None] * (cache.gamma * cache.inv_std)[:, None]).reshape(dx.shape)
        return dx, dg, db

    monkeypatch.setattr(model_module.ops, "batch_norm_backward", wrong)
    model = ReferenceModel(tiny_spec(drop=0.0, dropout=0.0), dtype="float64")
    with pytest.raises(GradcheckError, match="grad: max rel err"):
        model_gradcheck(model, _input(model.resolved.spec, (9, 11), n=2), max_entries=3)


def test_gradcheck_catches_a_wrong_skip_gradient(monkeypatch):
    """Forgetting the residual fan-out (the skip's gradient) must fail too."""
    model = ReferenceModel(tiny_spec(drop=0.0, dropout=0.0), dtype="float64")
    real_backward = model.backward

    def no_skip_backward(dlogits, return_input_grad=False):
        model._tape = [e for e in model._tape if e[0] != "skip_in"]
        model._tape = [e for e in model._tape if e[0] != "skip_out"]
        return real_backward(dlogits, return_input_grad)

    monkeypatch.setattr(model, "backward", no_skip_backward)
    with pytest.raises(GradcheckError):
        model_gradcheck(model, _input(model.resolved.spec, (9, 11), n=2), max_entries=3)


@settings(max_examples=6)
@given(spec=st_effv2.architecture_specs(max_stages=3, max_channels=6, max_repeats=2), data=st.data())
def test_model_gradcheck_random_specs(spec, data):
    model = ReferenceModel(spec, dtype="float64", seed=0)
    x = data.draw(st_effv2.inputs(spec, batch=2), label="x")
    # eps 2e-6: a drawn net may normalise BN over two values (batch 2, 1 x 1 pixels), whose curvature makes the
    # default 1e-5 step's truncation error reach 1e-6; float64 round-off stays ~1e-10 at this step
    model_gradcheck(model, x, max_entries=3, eps=2e-6)
