"""RandAugment's translate and cutout relative to the image (`augmentation.randaugment_reference_size`).

automl's constants are absolute pixels (translate 100 px, cutout half-side 40 px at magnitude 10). With a
reference size R they scale by side / R: checked against closed-form expectations (a shifted ramp, a square
of 128s), and against the official op at side == R, where the two must be the same bytes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from effv2_spec.documents import parse_obj
from effv2_spec.errors import SpecError
from effv2_spec.presets import load as load_preset
from effv2_train.data import randaugment_automl as ra

SIGNS = (-1.0, 1.0)


def ramp(h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3): column index in every row (distinct values, so a shift is readable off the pixels)."""
    return np.broadcast_to(np.arange(w, dtype=np.uint8)[None, :, None], (h, w, 3)).copy()


@given(side=st.integers(8, 400), reference=st.integers(8, 400), magnitude=st.floats(0, 30), sign=st.sampled_from(SIGNS))
def test_translate_and_cutout_arguments_scale_with_the_side(side, reference, magnitude, sign):
    scales = ra.pixel_scales(side, side, reference)
    m = magnitude / 10
    assert ra.level_to_arg("TranslateX", magnitude, sign=sign, scales=scales) == pytest.approx(
        sign * m * 100 * side / reference, rel=1e-12, abs=1e-12)
    assert ra.level_to_arg("Cutout", magnitude, scales=scales) == int(m * 40 * side / reference)


@given(magnitude=st.floats(0, 30), sign=st.sampled_from(SIGNS))
def test_absolute_pixels_are_the_default_and_unchanged(magnitude, sign):
    """No reference size: automl's own numbers (100 px, 40 px at magnitude 10) whatever the image."""
    assert ra.pixel_scales(32, 32, None) is None
    assert ra.level_to_arg("TranslateY", magnitude, sign=sign) == sign * magnitude / 10 * 100.0
    assert ra.level_to_arg("Cutout", magnitude) == int(magnitude / 10 * 40)


def test_non_square_images_scale_each_axis_by_its_own_side():
    scales = ra.pixel_scales(40, 80, 200)
    assert ra.level_to_arg("TranslateX", 10, sign=1.0, scales=scales) == pytest.approx(40.0)  # 100 * 80 / 200
    assert ra.level_to_arg("TranslateY", 10, sign=1.0, scales=scales) == pytest.approx(20.0)  # 100 * 40 / 200
    assert ra.level_to_arg("Cutout", 10, scales=scales) == 8  # 40 * min(40, 80) / 200


def test_translate_moves_a_32px_image_by_its_relative_share():
    """Magnitude 5, R = 160: 100 * 0.5 * 32 / 160 = 10 px to the right; the columns entering are 128 (automl's fill)."""
    img = ramp(32, 32)
    out = ra._apply("TranslateX", img, ra.level_to_arg("TranslateX", 5, sign=-1.0, scales=ra.pixel_scales(32, 32, 160)))
    absolute = ra._apply("TranslateX", img, ra.level_to_arg("TranslateX", 5, sign=-1.0))
    shift = 10
    assert np.array_equal(out[:, shift:], img[:, :-shift]) or np.array_equal(out[:, :-shift], img[:, shift:])
    assert (out == 128).all(axis=(0, 2)).sum() == shift
    assert (absolute == 128).all()  # 50 px on a 32 px image: nothing of it is left


def test_cutout_blanks_a_square_in_proportion():
    """Magnitude 10, R = 64 on a 32 px image: half-side int(40 * 0.5) = 20 -> at most a 40 x 40 box clipped to 32."""
    img = np.zeros((32, 32, 3), np.uint8)
    pad = ra.level_to_arg("Cutout", 10, scales=ra.pixel_scales(32, 32, 64))
    assert pad == 20
    out = ra.cutout(img, pad, (16, 16))
    assert (out == 128).all()
    pad_small = ra.level_to_arg("Cutout", 5, scales=ra.pixel_scales(32, 32, 320))  # int(20 * 0.1) = 2
    out = ra.cutout(img, pad_small, (10, 20))
    assert (out == 128).sum() == 4 * 4 * 3 and (out[8:12, 18:22] == 128).all()


@given(seed=st.integers(0, 2**32 - 1), layers=st.integers(1, 3), magnitude=st.floats(0, 20))
def test_at_the_reference_side_relative_is_the_official_op(seed, layers, magnitude):
    """side == R: the scale is exactly 1, so the draws and the bytes are automl's."""
    img = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    official = ra.randaugment(img, layers, magnitude, np.random.default_rng(seed))
    relative = ra.randaugment(img, layers, magnitude, np.random.default_rng(seed), reference_size=48)
    assert np.array_equal(official, relative)


def test_the_config_refuses_a_reference_size_for_torchvision():
    recipe = load_preset("training-cpu").model_dump(mode="json")
    recipe["augmentation"].update(randaugment="torchvision", randaugment_reference_size=224)
    rule = "augmentation.randaugment_reference_size: applies to randaugment .automl. only"
    with pytest.raises(SpecError, match=rule):
        parse_obj(recipe)
    recipe["augmentation"].update(randaugment="automl", randaugment_reference_size=4)
    with pytest.raises(SpecError, match="augmentation.randaugment_reference_size"):
        parse_obj(recipe)
