"""The official RandAugment (google/automl efficientnetv2/autoaugment.py), op by op, against closed
forms worked out by hand, PIL where automl's op matches PIL, and marked pixels for geometric ops."""

import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from effv2_train.data.randaugment import randaugment as torchvision_randaugment
from effv2_train.data import randaugment_automl as ra
from effv2_train.data import randaugment_image

MAGNITUDES = (0, 5, 10, 15, 25)


def noise(h=16, w=16, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def pil(img):
    return Image.fromarray(img)


def marked(h, w, y, x, background=50):
    img = np.full((h, w, 3), background, np.uint8)
    img[y, x] = 255
    return img


def where_marked(out):
    ys, xs = np.nonzero(out[..., 0] == 255)
    return list(zip(ys.tolist(), xs.tolist()))


def test_data_package_imports_no_numba():
    code = "import effv2_train.data, sys; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- level -> argument: (m / 10) * max, no cap -------------------------------------------------
@pytest.mark.parametrize("m, rotate, shear, translate, enhance, bits, threshold, addition, pad", [
    (0, 0.0, 0.0, 0.0, 0.1, 0, 0, 0, 0),
    (5, 15.0, 0.15, 50.0, 1.0, 2, 128, 55, 20),
    (10, 30.0, 0.3, 100.0, 1.9, 4, 256, 110, 40),
    (15, 45.0, 0.45, 150.0, 2.8, 6, 384, 165, 60),
    (25, 75.0, 0.75, 250.0, 4.6, 10, 640, 275, 100),
])
def test_level_to_arg(m, rotate, shear, translate, enhance, bits, threshold, addition, pad):
    arg = ra.level_to_arg
    assert arg("Rotate", m, sign=1.0) == pytest.approx(rotate)
    assert arg("Rotate", m, sign=-1.0) == pytest.approx(-rotate)
    assert arg("ShearX", m, sign=1.0) == pytest.approx(shear) and arg("ShearY", m, sign=-1.0) == pytest.approx(-shear)
    assert arg("TranslateX", m, sign=1.0) == pytest.approx(translate)
    assert arg("TranslateY", m, sign=1.0) == pytest.approx(translate)
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        assert arg(name, m) == pytest.approx(enhance)
    assert (arg("Posterize", m), arg("Solarize", m), arg("SolarizeAdd", m), arg("Cutout", m)) == (
        bits, threshold, addition, pad)


def test_signs_are_drawn_half_and_half():
    rng = np.random.default_rng(3)
    signs = [ra.level_to_arg("Rotate", 10, rng) > 0 for _ in range(4000)]
    assert 0.46 < np.mean(signs) < 0.54


# ---- pixel ops ---------------------------------------------------------------------------------
def test_invert_and_identity_ops_ignore_magnitude():
    img = noise()
    for m in MAGNITUDES:
        assert np.array_equal(ra.apply_op("Invert", img, m), 255 - img)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equalize_is_pil_exactly(seed):
    img = noise(seed=seed)
    img[..., 1] //= 4  # a narrow channel, where equalize moves values most
    assert np.array_equal(ra.apply_op("Equalize", img, 10), np.asarray(ImageOps.equalize(pil(img))))


def test_autocontrast_by_hand_and_pil():
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = [[0, 10], [20, 51]]  # lo 0, hi 51: scale exactly 5
    img[..., 1] = 77  # flat channel: kept
    img[..., 2] = [[5, 35], [5, 90]]  # lo 5, hi 90: scale exactly 3, offset -15
    out = ra.apply_op("AutoContrast", img, 10)
    assert out[..., 0].tolist() == [[0, 50], [100, 255]]
    assert (out[..., 1] == 77).all()
    assert out[..., 2].tolist() == [[0, 90], [0, 255]]
    # TF's float32 x * scale + offset can land just below 255 and truncate: lo 100, hi 255 gives
    # 255 * float32(255 / 155) - 164.51613 = 254.99998 -> 254
    top = np.array([[[100, 100, 100], [255, 255, 255]]], np.uint8)
    assert ra.autocontrast(top).tolist() == [[[0, 0, 0], [254, 254, 254]]]
    for seed in range(3):  # PIL truncates the same line computed in float64: float32 may land 1 off
        x = (noise(seed=seed) // 2 + 30).astype(np.uint8)
        diff = np.asarray(ImageOps.autocontrast(pil(x))).astype(int) - ra.autocontrast(x)
        assert np.abs(diff).max() <= 1 and (diff == 0).mean() > 0.95


@pytest.mark.parametrize("m, mask", [(0, 0x80), (5, 0xC0), (10, 0xF0), (15, 0xFC), (20, 0xFF), (25, 0x80)])
def test_posterize_tf_shift(m, mask):
    # bits = int(m / 10 * 4); TF shifts by 8 - bits as uint8, clamped to 7: bits 0 and >= 9 keep the top bit
    img = noise()
    out = ra.apply_op("Posterize", img, m)
    assert np.array_equal(out, img & mask)
    bits = int(m / 10 * 4)
    if 1 <= bits <= 8:
        assert np.array_equal(out, np.asarray(ImageOps.posterize(pil(img), bits)))


@pytest.mark.parametrize("m, threshold", [(0, 0), (2.5, 64), (5, 128), (10, 0), (15, 128), (7.5, 192)])
def test_solarize_threshold_modulo_256(m, threshold):
    img = noise()
    out = ra.apply_op("Solarize", img, m)
    assert np.array_equal(out, np.where(img < threshold, img, 255 - img))
    assert np.array_equal(out, np.asarray(ImageOps.solarize(pil(img), threshold)))
    if m == 10:
        assert np.array_equal(out, 255 - img)  # int(256) wraps to 0: everything inverted


@pytest.mark.parametrize("m, addition", [(0, 0), (5, 55), (10, 110), (15, 165), (25, 275)])
def test_solarize_add(m, addition):
    img = np.array([[[0, 100, 127], [128, 200, 255]]], np.uint8)
    out = ra.apply_op("SolarizeAdd", img, m)
    expect = [[[min(v + addition, 255) if v < 128 else v for v in px] for px in row] for row in img.tolist()]
    assert out.tolist() == expect


def test_color_by_hand():
    # grey of (255, 0, 0): trunc(0.2989 * 255.5) = 76; factor 0.1 (m 0): 76 + 0.1 * (255 - 76) = 93.9 -> 93,
    # 76 - 7.6 = 68.4 -> 68; factor 1.9 (m 10) extrapolates and clips: (255, 0, 0).
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert ra.apply_op("Color", red, 0).tolist() == [[[93, 68, 68]]]
    assert ra.apply_op("Color", red, 10).tolist() == [[[255, 0, 0]]]
    assert ra.apply_op("Color", red, 5).tolist() == [[[255, 0, 0]]]  # factor exactly 1: the image
    # (0, 200, 0): grey trunc(0.587 * 200 / 255 * 255.5) = trunc(117.63) = 117; factor 2.8 (m 15):
    # 117 + 2.8 * (200 - 117) = 349.4 -> 255, 117 - 2.8 * 117 = -210.6 -> 0
    green = np.array([[[0, 200, 0]]], np.uint8)
    assert ra.apply_op("Color", green, 15).tolist() == [[[0, 255, 0]]]
    assert ra.apply_op("Color", green, 0).tolist() == [[[105, 125, 105]]]  # 117 -/+ 11.7, 117 + 8.3
    grey = np.full((4, 4, 3), 90, np.uint8)
    for m in MAGNITUDES:
        assert np.array_equal(ra.apply_op("Color", grey, m), grey)


@pytest.mark.parametrize("m", [0, 10, 15])
def test_color_brightness_sharpness_close_to_pil(m):
    # automl ports PIL's enhancers; grey conversion and rounding differ by at most a level or two
    img = noise()
    factor = m / 10 * 1.8 + 0.1
    for name, enhancer, tol in (("Color", ImageEnhance.Color, 2), ("Brightness", ImageEnhance.Brightness, 0),
                                ("Sharpness", ImageEnhance.Sharpness, 2)):
        ours = ra.apply_op(name, img, m).astype(int)
        theirs = np.asarray(enhancer(pil(img)).enhance(factor)).astype(int)
        assert np.abs(ours - theirs).max() <= tol, name


@pytest.mark.parametrize("m, x, expect", [
    (0, 100, 10), (0, 0, 0),  # 0.1 * 100 = 10
    (10, 100, 190), (10, 200, 255),  # 1.9 * 200 clipped
    (15, 50, 140), (15, 100, 255),
    (25, 40, 184),  # 4.6 * 40
])
def test_brightness_by_hand(m, x, expect):
    img = np.full((2, 2, 3), x, np.uint8)
    assert (ra.apply_op("Brightness", img, m) == expect).all()


@pytest.mark.parametrize("m, x, expect", [
    (0, 100, 10),  # D = 16 * 16 / 256 = 1: 1 + 0.1 * 99 = 10.9 -> 10
    (10, 100, 189),  # 1 + 1.9 * 99 = 189.1
    (10, 0, 0),  # 1 - 1.9 = -0.9 -> clipped 0
    (15, 50, 138),  # 1 + 2.8 * 49 = 138.2
    (25, 30, 134),  # 1 + 4.6 * 29 = 134.4
])
def test_contrast_blends_with_pixel_count_over_256(m, x, expect):
    img = np.full((16, 16, 3), x, np.uint8)
    assert (ra.apply_op("Contrast", img, m) == expect).all()


def test_contrast_degenerate_by_image_size():
    # 224 x 224: 50176 / 256 = 196 (tensorflow/tpu#1057); factor 0.1: 196 + 0.1 * (0 - 196) = 176.4
    assert (ra.contrast(np.zeros((224, 224, 3), np.uint8), 0.1) == 176).all()
    # 8 x 8: 64 / 256 = 0.25 -> 0: contrast is then a brightness scaling
    img = noise(8, 8)
    assert np.array_equal(ra.contrast(img, 0.1), ra.brightness(img, 0.1))
    # 300 x 300: 351.6 clipped to 255
    assert (ra.contrast(np.zeros((300, 300, 3), np.uint8), 0.1) == 229).all()  # 255 - 25.5 = 229.5


@pytest.mark.parametrize("m, centre, ring", [(0, 58, 9), (10, 202, 0), (15, 255, 0), (5, 130, 0)])
def test_sharpness_by_hand(m, centre, ring):
    # 5 x 5 zeros with 130 in the middle: SMOOTH gives 130 * 5 / 13 = 50 there, 130 / 13 = 10 on the 8
    # neighbours; the border keeps the original (0). factor f: 50 + f * 80 and 10 - f * 10.
    img = np.zeros((5, 5, 3), np.uint8)
    img[2, 2] = 130
    out = ra.apply_op("Sharpness", img, m)[..., 0]
    assert out[2, 2] == centre
    ring_values = [out[y, x] for y in (1, 2, 3) for x in (1, 2, 3) if (y, x) != (2, 2)]
    assert ring_values == [ring] * 8
    assert out[0].tolist() == [0] * 5 and out[:, 0].tolist() == [0] * 5


def test_flat_images_stay_flat_under_sharpness():
    for v in range(256):
        img = np.full((4, 4, 3), v, np.uint8)
        assert np.array_equal(ra.sharpness(img, 0.1), img) and np.array_equal(ra.sharpness(img, 2.8), img)


# ---- geometric ops: where a marked pixel lands; 128 where nothing maps -------------------------
@pytest.mark.parametrize("m, sign", [(10, 1.0), (15, 1.0), (10, -1.0), (25, 1.0)])
def test_rotate_moves_a_marked_pixel(m, sign):
    # 21 x 21, centre (10, 10), mark 6 px right of it. Positive angles turn counterclockwise on screen:
    # output o reads input R(t)(o - c) + c, so the mark lands at c + R(-t)(6, 0) = (10 + 6 cos t, 10 - 6 sin t).
    img = marked(21, 21, 10, 16)
    out = ra.apply_op("Rotate", img, m, sign=sign)
    t = math.radians(sign * m * 3.0)
    ex, ey = 10 + 6 * math.cos(t), 10 - 6 * math.sin(t)
    hits = where_marked(out)
    assert hits and all(abs(y - ey) <= 1.0 and abs(x - ex) <= 1.0 for y, x in hits)
    if m >= 15:
        assert (out[0, 0] == 128).all() and (out[20, 20] == 128).all()  # corners rotated out


def test_rotate_stronger_above_10():
    img = marked(41, 41, 20, 36)
    angles = []
    for m in (5, 10, 15):
        (y, x), *_ = where_marked(ra.apply_op("Rotate", img, m, sign=1.0))
        angles.append(math.degrees(math.atan2(20 - y, x - 20)))
    assert angles == sorted(angles) and abs(angles[2] - 45) < 2 and abs(angles[1] - 30) < 2


@pytest.mark.parametrize("m, sign, x_to", [(10, 1.0, 6), (15, 1.0, 5), (10, -1.0, 14), (0, 1.0, 10)])
def test_shear_x(m, sign, x_to):
    # output (x, y) reads input (x + s y, y); mark at (x 10, y 12): s = 0.3 -> round(x + 3.6) = 10 at x = 6
    img = marked(21, 21, 12, 10)
    out = ra.apply_op("ShearX", img, m, sign=sign)
    assert where_marked(out) == [(12, x_to)]
    if m == 10 and sign > 0:
        assert (out[20, 20] == 128).all() and (out[0, 20] == 50).all()  # row 0 is not sheared


@pytest.mark.parametrize("m, sign, y_to", [(10, 1.0, 6), (15, 1.0, 5), (10, -1.0, 14)])
def test_shear_y(m, sign, y_to):
    img = marked(21, 21, 10, 12)
    assert where_marked(ra.apply_op("ShearY", img, m, sign=sign)) == [(y_to, 12)]


@pytest.mark.parametrize("m, sign, x_from, x_to", [(5, 1.0, 110, 60), (10, 1.0, 110, 10), (10, -1.0, 10, 110)])
def test_translate_x_absolute_pixels(m, sign, x_from, x_to):
    img = marked(4, 128, 2, x_from)
    out = ra.apply_op("TranslateX", img, m, sign=sign)
    assert where_marked(out) == [(2, x_to)]
    shift = int(m * 10)
    empty = out[:, 128 - shift:] if sign > 0 else out[:, :shift]
    assert (empty == 128).all() and empty.shape[1] == shift


def test_translate_beyond_the_image_at_15():
    img = noise(128, 128)
    assert (ra.apply_op("TranslateX", img, 15, sign=1.0) == 128).all()  # 150 px > 128
    out = ra.apply_op("TranslateY", img, 10, sign=1.0)  # content moves up 100 rows
    assert np.array_equal(out[:28], img[100:]) and (out[28:] == 128).all()


@pytest.mark.parametrize("m, rows", [(0, 0), (5, 40), (10, 80), (15, 100)])
def test_cutout_box(m, rows):
    img = np.full((100, 100, 3), 7, np.uint8)
    out = ra.cutout(img, ra.level_to_arg("Cutout", m), (50, 50))
    filled = out[..., 0] == 128
    assert filled.sum() == rows * rows and np.array_equal(out[filled], np.full((rows * rows, 3), 128))
    if rows:
        assert filled[50 - rows // 2, 50 - rows // 2] and filled[50 + rows // 2 - 1, 50 + rows // 2 - 1]


def test_cutout_clipped_at_the_edge_and_centre_from_rng():
    out = ra.cutout(np.zeros((30, 40, 3), np.uint8), 10, (3, 35))
    assert (out[0:13, 25:40] == 128).all() and (out == 128).sum() == 13 * 15 * 3
    img = noise(30, 40)
    got = ra.apply_op("Cutout", img, 5, np.random.default_rng(9))
    r = np.random.default_rng(9)
    cy, cx = int(r.integers(30)), int(r.integers(40))
    assert np.array_equal(got, ra.cutout(img, 20, (cy, cx)))


# ---- the policy ----------------------------------------------------------------------------------
def test_policy_draws_op_then_sign():
    img = noise(24, 24)
    for seed in range(20):
        got = ra.randaugment(img, 2, 10, np.random.default_rng(seed))
        r = np.random.default_rng(seed)
        want = img
        for _ in range(2):
            want = ra.apply_op(ra.OP_NAMES[int(r.integers(16))], want, 10, r)
        assert np.array_equal(got, want)


def test_every_op_drawn_uniformly():
    r = np.random.default_rng(0)
    counts = np.bincount([int(r.integers(16)) for _ in range(16000)], minlength=16)
    assert len(ra.OP_NAMES) == 16 and counts.min() > 850 and counts.max() < 1150


@pytest.mark.parametrize("m", MAGNITUDES)
def test_uint8_shape_and_determinism(m):
    for c in (1, 3):
        img = noise(20, 24, c)
        a = randaugment_image(img, 2, m, np.random.default_rng(5))
        b = randaugment_image(img, 2, m, np.random.default_rng(5))
        assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b)


def test_grey_images_are_run_as_grey_rgb():
    g = noise(12, 12, 1)
    for name in ra.OP_NAMES:
        out = ra.apply_op(name, g, 7, np.random.default_rng(1), sign=1.0)
        rgb = ra.apply_op(name, np.repeat(g, 3, axis=2), 7, np.random.default_rng(1), sign=1.0)
        assert np.array_equal(out[..., 0], rgb[..., 0]), name


def test_variants():
    img = noise(16, 16)
    tv = randaugment_image(img, 2, 9, np.random.default_rng(2), variant="torchvision")
    assert np.array_equal(tv, torchvision_randaugment(img, 2, 9, np.random.default_rng(2)))
    assert np.array_equal(randaugment_image(img, 2, 9, np.random.default_rng(2)),
                          ra.randaugment(img, 2, 9, np.random.default_rng(2)))
    with pytest.raises(ValueError, match="unknown variant"):
        randaugment_image(img, 2, 9, np.random.default_rng(2), variant="timm")
    with pytest.raises(ValueError, match="uint8"):
        randaugment_image(img.astype(np.float32), 2, 9, np.random.default_rng(2))


def test_magnitude_15_stronger_than_10_for_the_scaled_ops():
    img = noise(160, 160)
    img[img == 128] = 127  # so that 128 in the output means "filled"
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):  # larger extrapolation factor
        change = [np.abs(ra.apply_op(name, img, m).astype(int) - img).mean() for m in (10, 15)]
        assert change[1] > change[0], name
    for name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout"):  # more area emptied
        filled = [(ra.apply_op(name, img, m, np.random.default_rng(4), sign=1.0) == 128).sum() for m in (10, 15)]
        assert filled[1] > filled[0] > 0, name
