"""Mixup / CutMix per mix group as google/automl efficientnetv2/datasets.py `mixing` does it:
closed forms for the mixed pixels and targets, partners, per-sample generators."""

import numpy as np
import pytest

from effv2_train.data import cutmix_box, mix_group


class Fixed:
    """A stand-in generator that returns chosen draws: integers() from a list, beta() from a list."""

    def __init__(self, ints=(), betas=()):
        self.ints, self.betas = list(ints), list(betas)

    def integers(self, n):
        v = self.ints.pop(0)
        assert 0 <= v < n
        return v

    def beta(self, a, b):
        return self.betas.pop(0)


def group(n, c=2, h=6, w=8, k=5, dtype=np.float64, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, c, h, w)).astype(dtype)
    t = np.eye(k, dtype=dtype)[r.integers(k, size=n)]
    return x, t


def rngs(n, base=0):
    return [np.random.default_rng(base + i) for i in range(n)]


def test_alpha_zero_is_off():
    x, t = group(4)
    x2, t2 = mix_group(x, t, mixup_alpha=0.0, cutmix_alpha=0.0, rngs=rngs(4))
    assert np.array_equal(x2, x) and np.array_equal(t2, t) and x2 is not x


@pytest.mark.parametrize("n", [1, 4, 5])
def test_mixup_closed_form(n):
    x, t = group(n)
    a = 0.4
    got_x, got_t = mix_group(x, t, mixup_alpha=a, cutmix_alpha=0.0, rngs=rngs(n))
    for i, r in enumerate(rngs(n)):
        lam = r.beta(a, a)
        lam = max(lam, 1 - lam)
        j = n - 1 - i  # partner: the group reversed
        np.testing.assert_allclose(got_x[i], lam * x[i] + (1 - lam) * x[j], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_t[i], lam * t[i] + (1 - lam) * t[j], rtol=1e-12, atol=1e-12)
        assert lam >= 0.5
    np.testing.assert_allclose(got_t.sum(axis=1), 1.0, rtol=1e-12)


def test_mixup_sample_depends_only_on_its_generator():
    x, t = group(4)
    base, _ = mix_group(x, t, mixup_alpha=0.3, cutmix_alpha=0.0, rngs=rngs(4))
    other = rngs(4)
    other[1] = np.random.default_rng(999)
    changed, _ = mix_group(x, t, mixup_alpha=0.3, cutmix_alpha=0.0, rngs=other)
    assert np.array_equal(changed[[0, 2, 3]], base[[0, 2, 3]]) and not np.array_equal(changed[1], base[1])


@pytest.mark.parametrize("ints, area, box", [
    ((5, 5), 0.64, (2, 8, 2, 8)),  # ratio sqrt(0.36) = 0.6: r_w = r_h = 6, centre 5 -/+ 3
    ((0, 9), 0.64, (6, 10, 0, 3)),  # clipped at the left and bottom edges
    ((4, 3), 0.0, (0, 8, 0, 9)),  # area 0: ratio 1, r = 10 -/+ 5 around (3, 4) clipped
    ((7, 2), 1.0, (2, 2, 7, 7)),  # area 1: empty box
])
def test_cutmix_box_official_rule(ints, area, box):
    # draws: centre column, centre row (uniform ints), then the Beta area; on a 10 x 10 image
    assert cutmix_box(10, 10, 1.0, Fixed(ints=ints, betas=[area])) == box


def test_cutmix_box_non_square():
    # h 6, w 8, area 0.75: ratio 0.5 -> r_w = 4, r_h = 3 -> rows 4 -/+ 1, columns 3 -/+ 2
    assert cutmix_box(6, 8, 1.0, Fixed(ints=(3, 4), betas=[0.75])) == (3, 5, 1, 5)


def test_cutmix_pastes_partner_box_and_weights_by_group_area():
    x, t = group(3, h=10, w=10)
    gens = [Fixed(ints=(5, 5), betas=[0.64]), Fixed(ints=(0, 9), betas=[0.64]), Fixed(ints=(7, 2), betas=[1.0])]
    got_x, got_t = mix_group(x, t, mixup_alpha=0.0, cutmix_alpha=1.0, rngs=gens)
    boxes = [(2, 8, 2, 8), (6, 10, 0, 3), (2, 2, 7, 7)]
    for i, (y1, y2, x1, x2) in enumerate(boxes):
        want = x[i].copy()
        want[:, y1:y2, x1:x2] = x[2 - i][:, y1:y2, x1:x2]  # partner: reversed group
        assert np.array_equal(got_x[i], want)
    area = (36 + 12 + 0) / 300  # automl: one mean pasted fraction for the whole part
    np.testing.assert_allclose(got_t, (1 - area) * t + area * t[::-1], rtol=1e-12)
    np.testing.assert_allclose(got_t.sum(axis=1), 1.0, rtol=1e-12)


def test_cutmix_per_sample_area_option():
    x, t = group(3, h=10, w=10)
    gens = [Fixed(ints=(5, 5), betas=[0.64]), Fixed(ints=(0, 9), betas=[0.64]), Fixed(ints=(7, 2), betas=[1.0])]
    _, got_t = mix_group(x, t, mixup_alpha=0.0, cutmix_alpha=1.0, rngs=gens, cutmix_area="sample")
    for i, a in enumerate((0.36, 0.12, 0.0)):
        np.testing.assert_allclose(got_t[i], (1 - a) * t[i] + a * t[2 - i], rtol=1e-12)
    with pytest.raises(ValueError, match="cutmix_area"):
        mix_group(x, t, mixup_alpha=0.0, cutmix_alpha=1.0, rngs=rngs(3), cutmix_area="pixel")


def test_cutmix_label_weight_is_the_pasted_area_exactly():
    x, t = group(6, h=12, w=12)
    got_x, got_t = mix_group(x, t, mixup_alpha=0.0, cutmix_alpha=1.0, rngs=rngs(6, 50))
    pasted = np.zeros(6)
    for i, r in enumerate(rngs(6, 50)):
        y1, y2, x1, x2 = cutmix_box(12, 12, 1.0, r)
        pasted[i] = (y2 - y1) * (x2 - x1) / 144
        inside = np.zeros((12, 12), bool)
        inside[y1:y2, x1:x2] = True
        assert np.array_equal(got_x[i][:, inside], x[5 - i][:, inside])
        assert np.array_equal(got_x[i][:, ~inside], x[i][:, ~inside])
    np.testing.assert_allclose(got_t, (1 - pasted.mean()) * t + pasted.mean() * t[::-1], rtol=1e-12)


@pytest.mark.parametrize("n", [6, 5])
def test_both_split_the_group_each_half_reversed_on_its_own(n):
    x, t = group(n, h=10, w=10)
    half = n // 2
    a_mix, a_cut = 0.3, 1.0
    got_x, got_t = mix_group(x, t, mixup_alpha=a_mix, cutmix_alpha=a_cut, rngs=rngs(n, 7))
    gens = rngs(n, 7)
    for i in range(half):  # mixup, partner inside the first half
        lam = gens[i].beta(a_mix, a_mix)
        lam = max(lam, 1 - lam)
        j = half - 1 - i
        np.testing.assert_allclose(got_x[i], lam * x[i] + (1 - lam) * x[j], rtol=1e-12)
        np.testing.assert_allclose(got_t[i], lam * t[i] + (1 - lam) * t[j], rtol=1e-12)
    m = n - half
    areas = []
    for k in range(m):  # cutmix, partner inside the second half
        i, j = half + k, half + m - 1 - k
        y1, y2, x1, x2 = cutmix_box(10, 10, a_cut, gens[i])
        areas.append((y2 - y1) * (x2 - x1) / 100)
        want = x[i].copy()
        want[:, y1:y2, x1:x2] = x[j][:, y1:y2, x1:x2]
        assert np.array_equal(got_x[i], want)
    area = np.mean(areas)
    np.testing.assert_allclose(got_t[half:], (1 - area) * t[half:] + area * t[half:][::-1], rtol=1e-12)
    np.testing.assert_allclose(got_t.sum(axis=1), 1.0, rtol=1e-12)


def test_dtype_kept_and_errors():
    x, t = group(4, dtype=np.float32)
    got_x, got_t = mix_group(x, t, mixup_alpha=0.2, cutmix_alpha=0.2, rngs=rngs(4))
    assert got_x.dtype == np.float32 and got_t.dtype == np.float32 and got_x.shape == x.shape
    with pytest.raises(ValueError, match="generators"):
        mix_group(x, t, mixup_alpha=0.2, cutmix_alpha=0.0, rngs=rngs(3))
