"""The faster data pipeline gives the very bytes of the straightforward code it replaced.

Each `old_*` function below is the earlier, plainly written implementation (one image, one channel,
one generator at a time); the pipeline's optimised code must reproduce it bit for bit.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2_spec.documents import parse_obj
from effv2_spec.presets import load as load_preset
from effv2_train.data import load_digits, split
from effv2_train.data import randaugment_automl as ra
from effv2_train.data.pipeline import StepData, _resize_uint8, normalise, prepare_image
from effv2_train.data.mixing import mix_group
from effv2_train.data.mixup import one_hot
from effv2_train.data.resize import interpolation_matrix, resize_bilinear
from effv2_train.plan import PURPOSE_AUGMENT, PURPOSE_MIX, TrainingPlan, keyed_rng

from test_philox import old_masks  # the generator-per-row masks, written out once (tests/reference on sys.path)

F32 = np.float32


# ---- the earlier implementations ----------------------------------------------------------------
def old_resize_bilinear(x, size, channels_last=False):
    out_h, out_w = (size, size) if np.isscalar(size) else size
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float32)
    if channels_last:
        x = np.moveaxis(x, -1, -3)
    mh = interpolation_matrix(x.shape[-2], out_h).astype(dtype)
    mw = interpolation_matrix(x.shape[-1], out_w).astype(dtype)
    y = mh @ x.astype(dtype, copy=False) @ mw.T
    if channels_last:
        y = np.moveaxis(y, -3, -1)
    return np.ascontiguousarray(y)


def old_resize_uint8(img, size):
    if img.shape[0] == size and img.shape[1] == size:
        return img
    out = old_resize_bilinear(img[None].astype(np.float32), size, channels_last=True)[0]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def old_round_half_away(v):
    v = v.astype(np.float64)
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


def old_transform(image, a0, a1, a2, b0, b1, b2):
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(F32)
    a0, a1, a2, b0, b1, b2 = (F32(v) for v in (a0, a1, a2, b0, b1, b2))
    sx = old_round_half_away(a0 * xs + a1 * ys + a2)
    sy = old_round_half_away(b0 * xs + b1 * ys + b2)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    out = np.full_like(image, 128)
    out[inside] = image[sy[inside], sx[inside]]
    return out


def old_blend(image1, image2, factor):
    shape = np.broadcast_shapes(image1.shape, image2.shape)
    if factor == 0.0:
        return np.broadcast_to(image1, shape).astype(np.uint8)
    if factor == 1.0:
        return np.broadcast_to(image2, shape).astype(np.uint8)
    a = image1.astype(F32)
    temp = a + F32(factor) * (image2.astype(F32) - a)
    if 0.0 < factor < 1.0:
        return np.broadcast_to(temp, shape).astype(np.uint8)
    return np.broadcast_to(np.clip(temp, F32(0.0), F32(255.0)), shape).astype(np.uint8)


def old_autocontrast(image):
    out = image.copy()
    for c in range(image.shape[2]):
        ch = image[..., c]
        lo, hi = F32(ch.min()), F32(ch.max())
        if hi > lo:
            scale = F32(255.0) / (hi - lo)
            offset = -lo * scale
            out[..., c] = np.clip(ch.astype(F32) * scale + offset, F32(0.0), F32(255.0)).astype(np.uint8)
    return out


def old_equalize(image):
    out = image.copy()
    for c in range(image.shape[2]):
        ch = image[..., c]
        hist = np.bincount(ch.ravel(), minlength=256).astype(np.int64)
        step = (int(hist.sum()) - int(hist[hist > 0][-1])) // 255
        if step == 0:
            continue
        lut = (np.cumsum(hist) + step // 2) // step
        lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255).astype(np.uint8)
        out[..., c] = lut[ch]
    return out


def old_sharpness(image, factor):
    k = (np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], F32) / F32(13.0)).astype(np.float64)
    h, w = image.shape[:2]
    degenerate = image.copy()
    if h > 2 and w > 2:
        x = image.astype(np.float64)
        acc = np.zeros((h - 2, w - 2, image.shape[2]), np.float64)
        for dy in range(3):
            for dx in range(3):
                acc += x[dy:dy + h - 2, dx:dx + w - 2] * k[dy, dx]
        degenerate[1:-1, 1:-1] = np.clip(acc, 0.0, 255.0).astype(np.uint8)
    return old_blend(degenerate, image, factor)


def old_color(image, factor):
    return old_blend(np.repeat(ra.grayscale(image), 3, axis=2), image, factor)


def old_contrast(image, factor):
    h, w = image.shape[:2]
    degenerate = np.clip(F32(h * w) / F32(256.0), F32(0.0), F32(255.0)).astype(np.uint8)
    return old_blend(np.full(image.shape, degenerate, np.uint8), image, factor)


def old_brightness(image, factor):
    return old_blend(np.zeros_like(image), image, factor)


def old_normalise(images, resolved, dtype=np.float32):
    x = images.astype(dtype)
    if not resolved.normalize_in_model:
        norm = resolved.spec.input.normalization
        x = (x - np.asarray(norm.mean, dtype=dtype)) / np.asarray(norm.std, dtype=dtype)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=dtype)


def assert_identical(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


# ---- images -------------------------------------------------------------------------------------
@st.composite
def images(draw, max_side=24, channels=(1, 3)):
    """uint8 (H, W, C) images: noise, grey RGB, flat, few levels, one flat channel."""
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    c = draw(st.sampled_from(channels))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["noise", "grey", "flat", "levels", "flat_channel"]))
    img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    if kind == "grey":
        img = np.repeat(img[..., :1], c, axis=2)
    elif kind == "flat":
        img = np.full((h, w, c), rng.integers(256), np.uint8)
    elif kind == "levels":
        img = (rng.integers(0, 4, (h, w, c)) * rng.integers(1, 80)).astype(np.uint8)
    elif kind == "flat_channel":
        img[..., rng.integers(c)] = rng.integers(256)
    return img


FACTORS = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.1, 1.9, 2.8, -0.3]), st.floats(-1.0, 4.0, width=32))


# ---- resize ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(16, 16), (24, 24), (32, 32), (17, 23), (8, 8), (1, 5)])
@pytest.mark.parametrize("channels", [1, 3])
def test_batched_uint8_resize_is_the_per_image_resize(shape, channels):
    rng = np.random.default_rng(shape[0] * 100 + shape[1] + channels)
    batch = rng.integers(0, 256, (9,) + shape + (channels,), dtype=np.uint8)
    for size in (16, 24, 32, 13, 1):
        together = _resize_uint8(batch, size)
        for i, img in enumerate(batch):
            assert_identical(together[i], old_resize_uint8(img, size))
            assert_identical(_resize_uint8(img, size), old_resize_uint8(img, size))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_cached_interpolation_weights_give_the_same_resize(dtype):
    rng = np.random.default_rng(1)
    x = (rng.random((2, 3, 17, 23)) * 255).astype(dtype)
    for size in (16, (24, 9), 31):
        for _ in range(2):  # the second call reads the cache
            assert_identical(resize_bilinear(x, size), old_resize_bilinear(x, size))
            hwc = np.moveaxis(x, 1, -1)
            assert_identical(resize_bilinear(hwc, size, channels_last=True),
                             old_resize_bilinear(hwc, size, channels_last=True))
    assert interpolation_matrix(5, 3).flags.writeable  # the public function still hands out a fresh array


# ---- RandAugment ----------------------------------------------------------------------------------
COEFF = st.floats(-3.0, 3.0, width=32)
OFFSET = st.one_of(st.floats(-60.0, 60.0, width=32), st.integers(-60, 60).map(lambda k: k / 2))


@settings(max_examples=300)
@given(img=images(max_side=40), a=st.tuples(COEFF, COEFF, OFFSET, COEFF, COEFF, OFFSET))
def test_transform_is_the_old_transform(img, a):
    assert_identical(ra.transform(img, *a), old_transform(img, *a))


@settings(max_examples=150)
@given(img=images(max_side=40, channels=(3,)), degrees=st.floats(-90.0, 90.0), level=st.floats(-1.0, 1.0),
       pixels=st.one_of(st.integers(-120, 120), st.floats(-50.0, 50.0)))
def test_geometric_ops_are_the_old_ones(img, degrees, level, pixels):
    h, w = img.shape[:2]
    rad = F32(degrees) * F32(np.pi / 180.0)
    cos, sin = np.cos(rad, dtype=F32), np.sin(rad, dtype=F32)
    wm1, hm1 = F32(w - 1), F32(h - 1)
    x_off, y_off = (wm1 - (cos * wm1 - sin * hm1)) / F32(2.0), (hm1 - (sin * wm1 + cos * hm1)) / F32(2.0)
    assert_identical(ra.rotate(img, degrees), old_transform(img, cos, -sin, x_off, sin, cos, y_off))
    assert_identical(ra.shear_x(img, level), old_transform(img, 1.0, level, 0.0, 0.0, 1.0, 0.0))
    assert_identical(ra.shear_y(img, level), old_transform(img, 1.0, 0.0, 0.0, level, 1.0, 0.0))
    assert_identical(ra.translate_x(img, pixels), old_transform(img, 1.0, 0.0, pixels, 0.0, 1.0, 0.0))
    assert_identical(ra.translate_y(img, pixels), old_transform(img, 1.0, 0.0, 0.0, 0.0, 1.0, pixels))


def test_rounding_is_std_round_at_the_edges():
    edge = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 0.50000006, 8388607.5, -8388607.5,
                     2.0**23, 2.0**23 + 1, 2.0**24, -(2.0**24) - 2, 0.0, -0.0, 1e15, -1e15], F32)
    halves = np.arange(-4000, 4000, dtype=F32) / F32(2.0)
    v = np.concatenate([edge, halves, np.nextafter(halves, F32(np.inf)), np.nextafter(halves, F32(-np.inf)),
                        np.random.default_rng(0).standard_normal(20000).astype(F32) * F32(80.0)])
    assert np.array_equal(ra._round_half_away(v), old_round_half_away(v).astype(np.float64))


@settings(max_examples=300)
@given(img=images(channels=(3,)), factor=FACTORS)
def test_colour_ops_are_the_old_ones(img, factor):
    assert_identical(ra.autocontrast(img), old_autocontrast(img))
    assert_identical(ra.equalize(img), old_equalize(img))
    assert_identical(ra.sharpness(img, factor), old_sharpness(img, factor))
    assert_identical(ra.color(img, factor), old_color(img, factor))
    assert_identical(ra.contrast(img, factor), old_contrast(img, factor))
    assert_identical(ra.brightness(img, factor), old_brightness(img, factor))
    assert_identical(ra.blend(img[..., :1], img, factor), old_blend(img[..., :1], img, factor))


def test_sharpness_on_every_flat_level():
    """The float64 sum is exact, so its order cannot matter: flat images of every grey stay flat alike."""
    for g in range(256):
        img = np.full((4, 5, 3), g, np.uint8)
        for factor in (0.0, 0.5, 2.0):
            assert_identical(ra.sharpness(img, factor), old_sharpness(img, factor))


# ---- the step: rows, groups, masks ----------------------------------------------------------------
def old_prepare_rows(data, step, rows):
    plan = data.plan
    stage = plan.stage_at(step)
    indices = plan.batch_indices(step)
    magnitude = float(stage.regularizers.get("randaugment_magnitude", 0.0))
    start, stop, _ = rows.indices(plan.batch_size)
    out = []
    for r in range(start, stop):
        image, rng = data.source.images[indices[r]], keyed_rng(plan.seed, PURPOSE_AUGMENT, step, r)
        crop = data.config.augmentation.random_resized_crop
        if crop is None:  # the old per-image resize, then the unchanged rest of prepare_image
            image = old_resize_uint8(image, stage.image_size)
        out.append(prepare_image(image, size=stage.image_size, augmentation=data.config.augmentation,
                                 randaugment_layers=data.config.randaugment_layers, magnitude=magnitude, rng=rng))
    return np.stack(out)


def old_assemble(data, step, rows, images, resolved):
    plan = data.plan
    stage = plan.stage_at(step)
    start, stop, _ = rows.indices(plan.batch_size)
    labels = data.labels[plan.batch_indices(step)[start:stop]]
    x, targets = old_normalise(images, resolved), one_hot(labels, resolved.num_classes, np.float32)
    mixup_alpha = float(stage.regularizers.get("mixup_alpha", 0.0))
    cutmix_alpha = float(stage.regularizers.get("cutmix_alpha", 0.0))
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, targets
    g = plan.mix_group_size
    for a in range(start, stop, g):
        lo, hi = a - start, a - start + g
        rngs = [keyed_rng(plan.seed, PURPOSE_MIX, step, r) for r in range(a, a + g)]
        x[lo:hi], targets[lo:hi] = mix_group(x[lo:hi], targets[lo:hi], mixup_alpha=mixup_alpha,
                                             cutmix_alpha=cutmix_alpha, rngs=rngs)
    return x, targets




SIZE = 16


def tiny_run(augmentation: dict, seed: int):
    spec = json.loads(load_preset("efficientnetv2-nano").model_dump_json())
    spec["input"]["train_image_size"] = spec["input"]["eval_image_size"] = SIZE
    spec["conventions"]["stochastic_depth"]["rate"] = 0.2
    schedule = parse_obj({"kind": "progressive_schedule", "name": "tiny", "convention": "paper", "total_steps": 4,
                          "num_stages": 2, "image_size": {"start": 12, "end": SIZE, "multiple": 4},
                          "regularizers": {"randaugment_magnitude": {"start": 0, "end": 15},
                                           "mixup_alpha": {"start": 0.2, "end": 0.4},
                                           "cutmix_alpha": {"start": 0.5, "end": 1.0},
                                           "dropout": {"start": 0.1, "end": 0.3}}})
    recipe = parse_obj({"kind": "training", "name": "tiny", "batch_size": 16, "ema": None,
                        "optimizer": {"type": "sgd", "momentum": 0.9},
                        "augmentation": dict({"mix_group_size": 4}, **augmentation)})
    # stored at 20 px: every stage resizes; stage 1 has no RandAugment (without flips it draws nothing)
    data = split(load_digits(20))[0]
    plan = TrainingPlan(parse_obj(spec), schedule, recipe, len(data), seed=seed)
    return plan, StepData(plan, data)


@pytest.mark.parametrize("augmentation", [
    {"random_resized_crop": None, "horizontal_flip": False},
    {"random_resized_crop": None, "horizontal_flip": True, "randaugment": "torchvision"},
    {"horizontal_flip": True},
])
@pytest.mark.parametrize("seed", [0, 2**40 + 7])
def test_a_step_is_the_step_of_the_plain_pipeline(augmentation, seed):
    plan, data = tiny_run(augmentation, seed)
    for step in range(plan.total_steps):
        resolved = plan.stage_resolved(plan.stage_at(step))
        for rows in (slice(0, 16), slice(4, 12)):
            images = data.prepare_rows(step, rows)
            assert_identical(images, old_prepare_rows(data, step, rows))
            x, t = data.assemble(step, rows, images, resolved)
            ox, ot = old_assemble(data, step, rows, images, resolved)
            assert_identical(x, ox)
            assert_identical(t, ot)
        masks, expect = plan.masks(step, slice(0, 16), resolved), old_masks(plan, step, range(16), resolved, np.float32)
        assert masks.keys() == expect.keys() and len(masks) >= 2
        for name in masks:
            assert_identical(masks[name], expect[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalise_is_the_old_normalise(dtype):
    plan, _ = tiny_run({}, 0)
    resolved = plan.stage_resolved(plan.stage_at(0))
    rng = np.random.default_rng(3)
    for images in (rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8), rng.random((2, 4, 4, 3)) * 255):
        out = normalise(images, resolved, dtype)
        assert out.flags.c_contiguous
        assert_identical(out, old_normalise(images, resolved, dtype))
