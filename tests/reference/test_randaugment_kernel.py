"""The batched Numba RandAugment (kernels/data/randaugment.py) gives the very bytes of the NumPy ops
(data/randaugment_automl.py), op by op and through `StepData.prepare_rows`."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from effv2_spec.documents import parse_obj
from effv2_spec.presets import load as load_preset
from effv2_train.data import Dataset, load_digits, split
from effv2_train.data import pipeline
from effv2_train.data import randaugment_automl as ra
from effv2_train.data.crop import horizontal_flip
from effv2_reference.kernels.data import randaugment as kernel  # loads Numba: prepare_rows takes the kernel
from effv2_train.plan import TrainingPlan

MAGNITUDES = (0, 10, 15, 25, 30, 0.5, 2.5, 5, 7.3, 13.37, 29.99)
SIGNS = (-1.0, 1.0)


def kernel_op(name, img, arg):
    return kernel.randaugment_rows(img[None], [False], [[(name, arg)]])[0]


def check_op(name, img, magnitude, sign, seed):
    """The kernel on the argument `apply_op` draws (sign given, cutout's centre from `seed`)."""
    h, w = img.shape[:2]
    arg = ra.draw_argument(name, magnitude, h, w, np.random.default_rng(seed), sign)
    expect = ra.apply_op(name, img, magnitude, np.random.default_rng(seed), sign)
    got = kernel_op(name, img, arg)
    assert got.shape == expect.shape and got.dtype == np.uint8
    assert np.array_equal(got, expect), (name, img.shape, magnitude, sign, arg)


def special_images():
    rng = np.random.default_rng(7)
    out = []
    for h, w in ((1, 1), (1, 2), (2, 1), (2, 2), (3, 3), (1, 40), (40, 1), (2, 7), (5, 3)):
        for c in (1, 3):
            out.append(rng.integers(0, 256, (h, w, c), dtype=np.uint8))
            out.append(rng.choice(np.array([0, 255], np.uint8), (h, w, c)))
    for value in (0, 1, 127, 128, 254, 255):
        out.append(np.full((6, 5, 3), value, np.uint8))
        out.append(np.full((4, 4, 1), value, np.uint8))
    return out


@pytest.mark.parametrize("name", ra.OP_NAMES)
def test_each_op_on_edge_images(name):
    """Tiny sizes (sharpness's all-border 1x1 / 2x2), flat images, only 0 and 255, grey, every magnitude kind."""
    for i, img in enumerate(special_images()):
        for magnitude in MAGNITUDES:
            for sign in SIGNS if name in ra.SIGNED else SIGNS[1:]:
                check_op(name, img, magnitude, sign, seed=i)


@pytest.mark.parametrize("name", ra.OP_NAMES)
def test_each_op_on_every_flat_level(name):
    """256 flat images (one row each) in one kernel call: every grey level, where float32 sums sit on integers."""
    levels = np.repeat(np.arange(256, dtype=np.uint8), 4 * 5 * 3).reshape(256, 4, 5, 3)
    for magnitude in (2.5, 10, 25):
        sign = 1.0
        args = [ra.draw_argument(name, magnitude, 4, 5, np.random.default_rng(g), sign) for g in range(256)]
        got = kernel.randaugment_rows(levels, [False] * 256, [[(name, a)] for a in args])
        for g in range(256):
            expect = ra.apply_op(name, levels[g], magnitude, np.random.default_rng(g), sign)
            assert np.array_equal(got[g], expect), (name, magnitude, g)


def image_strategy(max_side=40):
    @st.composite
    def image(draw):
        h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
        c = draw(st.sampled_from([1, 3]))
        seed = draw(st.integers(0, 2**32 - 1))
        kind = draw(st.sampled_from(["noise", "flat", "extremes", "narrow"]))
        rng = np.random.default_rng(seed)
        if kind == "flat":
            return np.full((h, w, c), draw(st.integers(0, 255)), np.uint8)
        if kind == "extremes":
            return rng.choice(np.array([0, 255], np.uint8), (h, w, c))
        if kind == "narrow":  # a few neighbouring levels: autocontrast and equalize stretch them most
            lo = draw(st.integers(0, 250))
            return rng.integers(lo, lo + 6, (h, w, c)).astype(np.uint8)
        return rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    return image()


MAGNITUDE = st.one_of(st.sampled_from([0.0, 10.0, 15.0, 25.0, 30.0]), st.floats(0.0, 30.0))


@pytest.mark.parametrize("name", ra.OP_NAMES)
@given(img=image_strategy(), magnitude=MAGNITUDE, sign=st.sampled_from(SIGNS), seed=st.integers(0, 2**32 - 1))
def test_each_op_is_the_numpy_op(name, img, magnitude, sign, seed):
    check_op(name, img, magnitude, sign, seed)


@given(data=st.data(), rows=st.integers(1, 4), layers=st.integers(0, 4), magnitude=MAGNITUDE)
def test_rows_of_drawn_layers_are_randaugment(data, rows, layers, magnitude):
    """Several rows, each flipped or not, then its own `layers` drawn ops: `randaugment` row by row."""
    first = data.draw(image_strategy(24))  # the other rows: its pixels shuffled
    images = np.stack([first] + [np.random.default_rng(i).permutation(first.ravel()).reshape(first.shape)
                                 for i in range(rows - 1)])
    seeds = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=rows, max_size=rows))
    h, w = first.shape[:2]
    flips, drawn, expect = [], [], []
    for img, seed in zip(images, seeds):
        rng, ref_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        flips.append(bool(rng.random() < 0.5))
        drawn.append(ra.draw_layers(layers, magnitude, h, w, rng))
        flipped = horizontal_flip(img) if ref_rng.random() < 0.5 else img
        expect.append(ra.randaugment(flipped, layers, magnitude, ref_rng))
    assert np.array_equal(kernel.randaugment_rows(images, flips, drawn), np.stack(expect))
    # the compiled entry point on the encoded draws, and its NumPy twin (kernels/data/randaugment.py's TWINS)
    out = np.empty_like(images)
    kernel.randaugment_rows_into(images, np.asarray(flips, np.uint8), *kernel.encode(drawn, h, w), out)
    assert np.array_equal(out, np.stack(expect))
    assert np.array_equal(kernel.randaugment_rows_naive(images, flips, drawn), np.stack(expect))


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        kernel.randaugment_rows(np.zeros((1, 4, 4, 2), np.uint8), [False], [[]])
    with pytest.raises(ValueError, match="uint8"):
        kernel.randaugment_rows(np.zeros((1, 4, 4, 3), np.float32), [False], [[]])


# ---- through the pipeline ---------------------------------------------------------------------------
def nano_run(augmentation=None, magnitude_end=None, channels=3, stages=None):
    schedule = json.loads(load_preset("progressive-efficientnetv2-nano-paper").model_dump_json())
    if stages is not None:
        schedule["num_stages"] = stages
    if magnitude_end is not None:
        schedule["regularizers"]["randaugment_magnitude"]["end"] = magnitude_end
    recipe = json.loads(load_preset("training-cpu").model_dump_json())
    recipe["augmentation"].update(augmentation or {})
    data = split(load_digits())[0]
    plan = TrainingPlan(load_preset("efficientnetv2-nano"), parse_obj(schedule), parse_obj(recipe), len(data), seed=0)
    return plan, pipeline.StepData(plan, Dataset(data.images[..., :channels], data.labels, 10, "digits"))


@pytest.mark.parametrize("augmentation, magnitude_end, channels", [
    (None, None, 3),  # the default CPU run: magnitudes 0, 5, no flips, whole-image resize, relative pixels
    ({"horizontal_flip": True}, 25, 3),
    ({"horizontal_flip": True}, 17.5, 1),
    ({"horizontal_flip": True, "random_resized_crop": {}}, 15, 3),
    # no kernel: the NumPy ops either way
    ({"horizontal_flip": True, "randaugment": "torchvision", "randaugment_reference_size": None}, 15, 3),
    ({"horizontal_flip": True, "randaugment_reference_size": None}, 15, 3),  # automl's absolute pixels
])
def test_prepare_rows_with_and_without_the_kernel(monkeypatch, augmentation, magnitude_end, channels):
    assert pipeline._randaugment_rows_kernel() is not None
    plan, data = nano_run(augmentation, magnitude_end, channels)
    steps = [s for stage in plan.stages for s in (stage.start_step, stage.start_step + 1, stage.end_step - 1)]
    fast = {(s, r.start): data.prepare_rows(s, r) for s in steps for r in (slice(0, 32), slice(8, 24))}
    monkeypatch.setattr(pipeline, "_randaugment_rows_kernel", lambda: None)
    for (step, start), images in fast.items():
        rows = slice(start, 32 if start == 0 else 24)
        expect = data.prepare_rows(step, rows)
        assert images.shape == expect.shape and images.shape[-1] == channels
        assert np.array_equal(images, expect), (step, rows)


def test_the_pipeline_takes_no_kernel_without_numba():
    code = ("import sys; from effv2_train.data import pipeline; "
            "assert pipeline._randaugment_rows_kernel() is None; assert 'numba' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("parent_has_numba", [True, False])
def test_loader_workers_take_the_kernel_path_as_their_parent_does(parent_has_numba):
    """Data workers are spawned (fresh interpreters): an oracle's workers load Numba and use the kernel;
    a framework trainer's (no Numba in the parent) stay NumPy only."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from effv2_train.data import loader

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=loader._init_worker,
                             initargs=(None, parent_has_numba)) as pool:
        has_kernel = pool.submit(pipeline._randaugment_rows_kernel).result(timeout=120) is not None
    assert has_kernel is parent_has_numba


def test_a_small_training_set_is_resized_once_per_size_with_the_same_bytes(monkeypatch):
    """prepare_rows from the whole set resized once per stage size equals resizing each step's rows."""
    plan, data = nano_run(None, None, 3, stages=3)  # 16, 24, 32 px: two sizes to resize to
    steps = [s for stage in plan.stages for s in (stage.start_step, stage.end_step - 1)]
    assert len({plan.stage_at(s).image_size for s in steps} - {data.source.images.shape[1]}) == 2  # 16 and 24 px
    cached = {s: data.prepare_rows(s, slice(8, 40)) for s in steps}
    assert data._resized is not None and data._resized[1].shape[0] == len(data.source.images)
    monkeypatch.setattr(pipeline.StepData, "RESIZED_CACHE_BYTES", 0)
    fresh = pipeline.StepData(plan, data.source)
    for s, images in cached.items():
        assert np.array_equal(images, fresh.prepare_rows(s, slice(8, 40))), s
    assert fresh._resized is None
