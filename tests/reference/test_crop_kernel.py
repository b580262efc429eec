"""The Numba resize of the random-resized crop (kernels/data/crop.py) gives the very bytes of its NumPy twin
(data/crop.py: resize_bilinear_tf then to_uint8), and data/crop.py takes it only where Numba is loaded
and EFFV2_DATA_KERNELS is not 'numpy'."""

import subprocess
import sys

import numpy as np
import pytest

from effv2_train.data import crop
from effv2_train.data.crop import _lerp_weights
from effv2_reference.kernels.data.crop import resize_uint8, resize_uint8_into, resize_uint8_naive  # loads Numba


def _check(region, size):
    got, want = resize_uint8(region, size), resize_uint8_naive(region, size)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.array_equal(got, want), (region.shape, size)


@pytest.mark.parametrize("channels", [1, 3])
def test_random_shapes_up_and_down(channels):
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        size = int(rng.integers(1, 70))
        region = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        _check(region, size)
        _check(region, (int(rng.integers(1, 50)), int(rng.integers(1, 50))))  # non-square output


def test_strided_views_of_a_larger_image():
    """The crop hands the kernel a view (rows and columns of the decoded image), and a flipped one must work too."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for y, x, h, w in ((0, 0, 120, 160), (13, 27, 41, 77), (119, 159, 1, 1), (5, 0, 100, 3)):
        region = img[y:y + h, x:x + w]
        assert region.base is img  # a view, not a copy
        for size in (1, 7, 32, 224):
            _check(region, size)
    _check(img[:, ::-1], 50)
    _check(img[::2, ::3], 64)
    img.flags.writeable = False  # np.asarray of a Pillow image is read-only
    _check(img[13:54, 27:104], 60)


def test_flat_and_extreme_levels_stay_exact():
    """A flat region resizes to itself (the lerp form gives v exactly; a weighted sum could truncate to v - 1)."""
    for value in (0, 1, 127, 254, 255):
        region = np.full((37, 53, 3), value, np.uint8)
        for size in (5, 64, 300):
            out = resize_uint8(region, size)
            assert (out == value).all()
            _check(region, size)
    rng = np.random.default_rng(2)
    _check(rng.choice(np.array([0, 255], np.uint8), (31, 17, 1)), 96)


def test_known_values_by_hand():
    """2 x 1 -> 4 x 1: sources -0.25 (clamped to row 0), 0.25, 0.75, 1.25 (upper clamped): 10, 15, 25, 30
    after truncation of 10, 15, 25, 30 (exact in float32)."""
    region = np.array([[[10]], [[30]]], np.uint8)
    out = resize_uint8(region, (4, 1))
    assert out[:, 0, 0].tolist() == [10, 15, 25, 30]
    region = np.array([[[0, 255]]], np.uint8).reshape(1, 2, 1)  # 1 x 2 -> 1 x 3: x = 1/6, 5/6 + ...
    assert np.array_equal(resize_uint8(region, (1, 3)), resize_uint8_naive(region, (1, 3)))


def test_the_entry_point_fills_its_output_as_the_twin():
    """resize_uint8_into with the twin's own weights (a read-only region, as Pillow's arrays are)."""
    region = np.random.default_rng(5).integers(0, 256, (33, 21, 3), dtype=np.uint8)
    region.flags.writeable = False
    y0, y1, dy = _lerp_weights(33, 50)
    x0, x1, dx = _lerp_weights(21, 17)
    out = np.zeros((50, 17, 3), np.uint8)
    resize_uint8_into(region, y0.astype(np.int64), y1.astype(np.int64), dy, x0.astype(np.int64),
                      x1.astype(np.int64), dx, out)
    assert np.array_equal(out, resize_uint8_naive(region, (50, 17)))


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="uint8"):
        resize_uint8(np.zeros((4, 4, 3), np.float32), 2)
    with pytest.raises(ValueError, match="non-empty"):
        resize_uint8(np.zeros((0, 4, 3), np.uint8), 2)


def test_the_crop_takes_the_kernel_only_where_numba_is_loaded_and_wanted(monkeypatch):
    assert crop.data_kernel("kernels.data.crop", "resize_uint8") is resize_uint8  # Numba is loaded here
    img = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    with_kernel = crop.random_resized_crop(img, 24, np.random.default_rng(4))
    monkeypatch.setenv("EFFV2_DATA_KERNELS", "numpy")
    assert crop.data_kernel("kernels.data.crop", "resize_uint8") is None
    without = crop.random_resized_crop(img, 24, np.random.default_rng(4))
    assert with_kernel.shape == (24, 24, 3) and np.array_equal(with_kernel, without)


def test_the_data_modules_never_load_numba():
    code = ("import sys, numpy as np; from effv2_train.data import crop; "
            "crop.random_resized_crop(np.zeros((9, 9, 3), np.uint8), 4, np.random.default_rng(0)); "
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
