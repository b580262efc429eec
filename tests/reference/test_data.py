"""Data sources, RandAugment and mixup: errors, determinism, and values checked against PIL and by hand."""

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from effv2_train.data import (OPS, DataError, apply_op, load_digits, load_npz, mixup, open_source,
                                  randaugment_batch, split, to_input)
from effv2_train.data.randaugment import SIGNED
from effv2_spec.presets import load as load_preset
from effv2_spec.resolve import resolve


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def good_images(n=6, size=8, c=3):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, c), dtype=np.uint8)


# ---- .npz --------------------------------------------------------------------------------------
def test_npz_good_and_grayscale_replicated(tmp_path):
    imgs = good_images(c=1)
    p = write_npz(tmp_path / "d.npz", images=imgs, labels=np.arange(6) % 3)
    d = load_npz(p, num_classes=10, channels=3)
    assert d.images.shape == (6, 8, 8, 3) and d.images.dtype == np.uint8
    assert np.array_equal(d.images[..., 2], imgs[..., 0])
    assert d.labels.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("images, labels, message", [
    (good_images().astype(np.float32), np.zeros(6, int), "must be uint8"),
    (good_images()[..., 0], np.zeros(6, int), "must be 4-D NHWC"),
    (good_images().transpose(0, 3, 1, 2), np.zeros(6, int), "last axis must be the channels"),
    (good_images(), np.zeros(5, int), "one label per image (6)"),
    (good_images(), np.zeros(6, float), "must be integers"),
    (good_images(), np.array([0, 1, 2, 3, 4, 10]), "must lie in [0, 10)"),
    (good_images(), np.array([0, 1, 2, 3, 4, -1]), "must lie in [0, 10)"),
])
def test_npz_errors(tmp_path, images, labels, message):
    p = write_npz(tmp_path / "bad.npz", images=images, labels=labels)
    with pytest.raises(DataError) as exc:
        load_npz(p, num_classes=10, channels=3)
    assert message in str(exc.value) and str(exc.value).startswith(p)
    assert "\n" not in str(exc.value)


def test_npz_missing_key_and_not_npz(tmp_path):
    p = write_npz(tmp_path / "x.npz", pictures=good_images(), labels=np.zeros(6, int))
    with pytest.raises(DataError, match="missing array.*images"):
        load_npz(p, 10, 3)
    q = tmp_path / "text.npz"
    q.write_text("hello")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_npz(q, 10, 3)
    with pytest.raises(DataError, match="no such file"):
        open_source(str(tmp_path / "missing.npz"), num_classes=10, channels=3)


# ---- image folders -----------------------------------------------------------------------------
def test_folder_source_reads_originals_by_row(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFV2_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for ci, cls in enumerate(["cat", "ant"]):  # sorted: ant -> 0, cat -> 1
        (root / cls).mkdir(parents=True)
        for i in range(3):
            arr = np.full((10 + i, 12, 3), 40 * ci + i, dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    (root / "ant" / "notes.txt").write_text("not an image")
    d = open_source(str(root), num_classes=10, channels=3)
    assert len(d) == 6 and d.labels.tolist() == [0, 0, 0, 1, 1, 1] and d.classes == ["ant", "cat"]
    # each image at its own size, nothing squashed: the ant images are 40 + i, the cats i
    assert [d.image_size(i) for i in range(3)] == [(10, 12), (11, 12), (12, 12)]
    assert d.image(0).shape == (10, 12, 3) and d.image(0).min() == d.image(0).max() == 40
    assert d.image(5).shape == (12, 12, 3) and d.image(5).max() == 2
    assert np.array_equal(d.crop(1, (2, 3, 5, 6), 4), d.image(1)[2:7, 3:9])


def test_folder_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFV2_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        open_source(str(root), num_classes=10, channels=3)
    (root / "a").mkdir()
    (root / "a" / "x.txt").write_text("text")
    with pytest.raises(DataError, match=r"a: none of its 1 file\(s\) is a readable image"):
        open_source(str(root), num_classes=10, channels=3)
    (root / "a" / "x.txt").unlink()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "a" / "x.png")
    for i in range(3):
        (root / f"c{i}").mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / f"c{i}" / "x.png")
    with pytest.raises(DataError, match="4 classes but the spec's num_classes is 2"):
        open_source(str(root), num_classes=2, channels=3)


# ---- digits and the split ----------------------------------------------------------------------
def test_digits_and_split():
    d = load_digits(16)
    assert d.images.shape == (1797, 16, 16, 3) and d.images.dtype == np.uint8
    assert d.images.max() == 255 and d.images.min() == 0
    train, held = split(d)
    train2, held2 = split(load_digits(16))
    assert np.array_equal(held.labels, held2.labels) and np.array_equal(held.images, held2.images)
    assert len(train) + len(held) == 1797
    # stratified: each class ~20% held out (every class has 174..183 images)
    counts = np.bincount(held.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37


def test_to_input_normalises_per_spec():
    r = resolve(load_preset("efficientnetv2-nano"))   # mean 128, std 128, outside the model
    x = to_input(np.array([[[[0, 128, 255]]]], dtype=np.uint8), 1, r)
    assert x.shape == (1, 3, 1, 1)
    assert x[0, :, 0, 0].tolist() == [-1.0, 0.0, 127.0 / 128.0]


# ---- RandAugment -------------------------------------------------------------------------------
def sample_image():
    rng = np.random.default_rng(3)
    img = rng.integers(50, 200, (32, 32, 3), dtype=np.uint8)  # >= 256 pixels: equalize acts
    img[8:24, 12:20] = [230, 20, 90]  # a coloured patch, so geometric and colour ops both show
    return img


def test_randaugment_deterministic_under_a_seed():
    batch = np.stack([sample_image()] * 8)
    a = randaugment_batch(batch, 2, 9, np.random.default_rng(7))
    b = randaugment_batch(batch, 2, 9, np.random.default_rng(7))
    c = randaugment_batch(batch, 2, 9, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == batch.shape


@pytest.mark.parametrize("name", sorted(set(OPS) - {"identity"}))
def test_each_op_changes_the_image(name):
    img = sample_image()
    out = apply_op(name, img, 15, 1.0)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert not np.array_equal(out, img), name


@pytest.mark.parametrize("name", sorted(set(OPS) - {"autocontrast", "equalize"}))
def test_magnitude_zero_is_identity(name):
    img = sample_image()
    for sign in (1.0, -1.0):
        assert np.array_equal(apply_op(name, img, 0, sign), img), name


def test_magnitude_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 30\]"):
        apply_op("rotate", sample_image(), 31)


def test_ops_against_pil():
    img = sample_image()
    pil = Image.fromarray(img)

    def close(a, b, tol):
        assert np.abs(a.astype(int) - np.asarray(b).astype(int)).max() <= tol

    close(apply_op("equalize", img, 0), ImageOps.equalize(pil), 0)
    close(apply_op("posterize", img, 30), ImageOps.posterize(pil, 4), 0)   # M 30: 8 - 4 bits
    close(apply_op("solarize", img, 15), ImageOps.solarize(pil, 128), 0)   # M 15: threshold 128
    close(apply_op("autocontrast", img, 0), ImageOps.autocontrast(pil), 1)
    # M 15 of 30 -> factor 1 +- 0.9 * 0.5; PIL rounds its blends in integers, hence tolerance 1
    for name, enhancer in [("brightness", ImageEnhance.Brightness), ("color", ImageEnhance.Color),
                           ("contrast", ImageEnhance.Contrast), ("sharpness", ImageEnhance.Sharpness)]:
        close(apply_op(name, img, 15, 1.0), enhancer(pil).enhance(1.45), 1)
        close(apply_op(name, img, 15, -1.0), enhancer(pil).enhance(0.55), 1)


def test_geometric_ops_by_hand():
    img = np.arange(1, 101, dtype=np.uint8).reshape(10, 10, 1)
    # translate_x at M 30: 150/331 * 10 = 4.53 px; output column x samples rint(x - 4.53)
    out = apply_op("translate_x", img, 30, 1.0)
    assert np.array_equal(out[:, 5:], img[:, :5]) and not out[:, :5].any()
    out = apply_op("translate_y", img, 30, -1.0)
    assert np.array_equal(out[:5], img[5:]) and not out[5:].any()
    assert "translate_x" in SIGNED and "posterize" not in SIGNED
    # posterize by hand: 191 = 0b10111111 keeps its top 4 bits at M 30 -> 0b10110000 = 176
    assert apply_op("posterize", np.full((1, 1, 1), 191, np.uint8), 30)[0, 0, 0] == 176
    # brightness +: factor 1.45, 100 -> 145
    assert apply_op("brightness", np.full((1, 1, 1), 100, np.uint8), 15, 1.0)[0, 0, 0] == 145


# ---- mixup -------------------------------------------------------------------------------------
def test_mixup_off():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    xm, t, lam = mixup(x, np.array([0, 2, 1]), 3, 0.0, np.random.default_rng(0))
    assert np.array_equal(xm, x) and np.array_equal(t, np.eye(3, dtype=np.float32)[[0, 2, 1]])
    assert lam.tolist() == [1.0, 1.0, 1.0]


def test_mixup_math():
    x = np.array([[0.0], [10.0], [4.0]], dtype=np.float64)
    labels = np.array([0, 1, 2])
    xm, t, lam = mixup(x, labels, 3, 0.4, np.random.default_rng(5))
    # the same draws by hand: lam ~ Beta(0.4, 0.4) per example, folded to >= 0.5; partner = reversed batch
    expect = np.random.default_rng(5).beta(0.4, 0.4, size=3)
    expect = np.maximum(expect, 1 - expect)
    assert np.allclose(lam, expect, rtol=0, atol=1e-15) and (lam >= 0.5).all()
    assert xm[0, 0] == pytest.approx(lam[0] * 0 + (1 - lam[0]) * 4.0)
    assert xm[1, 0] == pytest.approx(10.0)  # the middle example is its own partner
    assert t[0].tolist() == pytest.approx([lam[0], 0.0, 1 - lam[0]])
    assert t[2].tolist() == pytest.approx([1 - lam[2], 0.0, lam[2]])
    assert np.allclose(t.sum(axis=1), 1.0)


def test_digits_table_is_scikit_learns_without_importing_it():
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sk_digits

    from effv2_train.data.sources import _digits_table

    pixels, labels = _digits_table()
    reference = sk_digits()
    assert np.array_equal(pixels.reshape(-1, 8, 8), reference.images)
    assert np.array_equal(labels, reference.target) and labels.dtype == np.int64
    probe = ("import sys; from effv2_train.data import load_digits; load_digits(16); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
