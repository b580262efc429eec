"""The official V2 base train transform: TF sample_distorted_bounding_box (min_object_covered=0),
bilinear resize, clip and truncate to uint8; horizontal flip."""

import numpy as np
import pytest

from effv2_train.data import horizontal_flip, random_resized_crop, resize_bilinear, sample_crop_box
from effv2_train.data.crop import resize_bilinear_tf, to_uint8


def source(d, n_in, n_out):
    """TF's half-pixel source coordinate, in float32 as TF computes it (scale = in / out in float32)."""
    f = np.float32
    return float((f(d) + f(0.5)) * (f(n_in) / f(n_out)) - f(0.5))


def bilinear_by_hand(img, out_h, out_w):
    """Per output pixel: source (d + 0.5) * in / out - 0.5, clamped at 0; neighbours clamped at the edge."""
    h, w = img.shape[:2]
    out = np.zeros((out_h, out_w) + img.shape[2:])
    for i in range(out_h):
        sy = max(source(i, h, out_h), 0.0)
        y0 = min(int(np.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = max(source(j, w, out_w), 0.0)
            x0 = min(int(np.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
            bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("shape", [(80, 100), (100, 80), (37, 53), (224, 224)])
def test_boxes_inside_with_area_and_aspect_in_range(shape):
    height, width = shape
    rng = np.random.default_rng(0)
    boxes = np.array([sample_crop_box(height, width, rng) for _ in range(1500)])
    y, x, h, w = boxes.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= height).all() and (x + w <= width).all()
    area = h * w / (height * width)
    assert area.min() >= 0.05 and area.max() <= 1.0
    # width = lrint(h * aspect): the ratio is in range up to half a pixel of rounding
    assert (w >= 0.75 * h - 0.5).all() and (w <= 4 / 3 * h + 0.5 + 1e-6).all()
    # TF draws offsets in [0, H - h): a box shorter than the image never touches the bottom edge
    assert (y[h < height] + h[h < height] < height).all() and (x[w < width] + w[w < width] < width).all()
    # the sampler covers the range: small and near-full boxes both occur
    assert area.min() < 0.08 and area.max() > 0.9


def test_fallback_to_the_whole_image_after_100_failed_attempts():
    # 1 x 100: every aspect in [3/4, 4/3] gives a box of one pixel's height and width, far below 5% of 100
    rng = np.random.default_rng(7)
    assert sample_crop_box(1, 100, rng) == (0, 0, 1, 100)
    spent = np.random.default_rng(7)
    spent.random(100, dtype=np.float32)  # one float32 aspect per attempt, nothing else
    assert rng.random() == spent.random()
    img = (np.arange(300) % 256).astype(np.uint8).reshape(1, 100, 3)
    want = np.floor(bilinear_by_hand(img.astype(np.float64), 4, 4))
    assert np.array_equal(random_resized_crop(img, 4, np.random.default_rng(7)), want)


def test_full_area_square_is_the_whole_image():
    rng = np.random.default_rng(1)
    for _ in range(20):
        assert sample_crop_box(10, 10, rng, area=(1.0, 1.0), aspect=(1.0, 1.0)) == (0, 0, 10, 10)


def test_deterministic_under_a_seed():
    img = np.random.default_rng(0).integers(0, 256, (60, 70, 3), dtype=np.uint8)
    a = random_resized_crop(img, 32, np.random.default_rng(11))
    b = random_resized_crop(img, 32, np.random.default_rng(11))
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3) and np.array_equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_then_bilinear_resize_then_truncate(seed):
    img = np.random.default_rng(seed).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    y, x, h, w = sample_crop_box(45, 61, np.random.default_rng(100 + seed))
    got = random_resized_crop(img, 24, np.random.default_rng(100 + seed))
    ref = bilinear_by_hand(img[y:y + h, x:x + w].astype(np.float64), 24, 24)
    # uint8 = trunc(clip(ref)); float32 vs float64 may move a value within an ulp of an integer
    want = np.floor(np.clip(ref, 0, 255))
    assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.98
    assert np.array_equal(got, to_uint8(resize_bilinear_tf(img[y:y + h, x:x + w], 24)))
    # TF's lerp form and the matrix form of resize_bilinear sample the same points
    np.testing.assert_allclose(resize_bilinear_tf(img, (24, 31)),
                               resize_bilinear(img.astype(np.float64), (24, 31), channels_last=True), atol=1e-3)


@pytest.mark.parametrize("size", [7, 24, 100])
def test_flat_regions_keep_their_level(size):
    # the lerp gives v exactly where all four neighbours are v (a weighted sum could give v - ulp -> v - 1)
    for v in (1, 3, 77, 131, 254, 255):
        img = np.full((45, 61, 3), v, np.uint8)
        assert (random_resized_crop(img, size, np.random.default_rng(v)) == v).all()


def test_downscale_by_two_averages_pixel_pairs():
    # 4 x 4 -> 2 x 2: every output pixel sits between two source rows and columns: the mean of a 2 x 2 block
    img = np.array([[0, 10, 20, 31], [40, 50, 60, 70], [80, 90, 100, 110], [120, 130, 140, 151]], np.uint8)[..., None]
    got = random_resized_crop(img, 2, np.random.default_rng(0), area=(1.0, 1.0), aspect=(1.0, 1.0))
    assert got[..., 0].tolist() == [[25, 45], [105, 125]]  # 25, 45.25 -> 45, 105, 125.25 -> 125


def test_horizontal_flip():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = horizontal_flip(img)
    assert out[0, 0].tolist() == img[0, 2].tolist() and out[1, 2].tolist() == img[1, 0].tolist()
    assert np.array_equal(horizontal_flip(out), img) and out.flags["C_CONTIGUOUS"]
