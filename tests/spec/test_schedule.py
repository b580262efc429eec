"""Progressive schedules against the numbers google/automl's efficientnetv2/main.py produces for ImageNet-1k (M=4
stages from image_size 128: sizes, RandAugment magnitudes, mixup) and against the paper's formula (Algorithm 1)."""

import pytest

from effv2_spec import presets
from effv2_spec.documents import parse_obj
from effv2_spec.schedule import ProgressiveSchedule


def table(name):
    return presets.load(name).stages()


@pytest.mark.parametrize("name, sizes, ram, mixup", [
    ("progressive-efficientnetv2-s-automl", [171, 214, 257, 300], [5, 20 / 3, 25 / 3, 10], [0, 0, 0, 0]),
    ("progressive-efficientnetv2-m-automl", [192, 256, 320, 384], [5, 25 / 3, 35 / 3, 15], [0, 0.2 / 3, 0.4 / 3, 0.2]),
    ("progressive-efficientnetv2-l-automl", [192, 256, 320, 384], [5, 10, 15, 20], [0, 0.5 / 3, 1 / 3, 0.5]),
])
def test_automl_schedules_reproduce_official_code(name, sizes, ram, mixup):
    rows = table(name)
    assert [r.image_size for r in rows] == sizes
    assert [r.regularizers["randaugment_magnitude"] for r in rows] == pytest.approx(ram)
    assert [r.regularizers["mixup_alpha"] for r in rows] == pytest.approx(mixup)
    assert [r.regularizers["cutmix_alpha"] for r in rows] == pytest.approx(mixup)
    assert "dropout" not in rows[0].regularizers  # official main.py does not schedule dropout
    # main.py stage boundaries for 350 epochs of 1,256,144 images at batch 4096
    assert [r.end_step for r in rows] == [26_834, 53_668, 80_502, 107_336]


def test_paper_schedule_for_s_follows_algorithm_1():
    rows = table("progressive-efficientnetv2-s-paper")
    # S_i = 128 + (300 - 128) * i / 3, rounded half up
    assert [r.image_size for r in rows] == [128, 185, 243, 300]
    assert [r.regularizers["dropout"] for r in rows] == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3])
    assert [r.regularizers["randaugment_magnitude"] for r in rows] == pytest.approx([5, 25 / 3, 35 / 3, 15])


def make(convention, m, n, start=128, end=300, multiple=1, regs=None):
    return parse_obj({"kind": "progressive_schedule", "name": "t", "convention": convention, "total_steps": n,
                      "num_stages": m, "image_size": {"start": start, "end": end, "multiple": multiple},
                      "regularizers": regs or {}}, ProgressiveSchedule)


@pytest.mark.parametrize("convention", ["paper", "automl"])
def test_single_stage_uses_final_values(convention):
    (row,) = make(convention, 1, 10, regs={"dropout": {"start": 0.1, "end": 0.3}}).stages()
    assert (row.image_size, row.steps, row.regularizers["dropout"]) == (300, 10, 0.3)


def test_steps_sum_exactly_when_n_is_not_divisible():
    rows = make("paper", 7, 100).stages()
    assert [r.steps for r in rows] == [14, 14, 14, 15, 14, 14, 15]
    assert sum(r.steps for r in rows) == 100
    assert rows[0].start_step == 0 and rows[-1].end_step == 100


def test_image_size_multiple_floors():
    assert [r.image_size for r in make("paper", 4, 8, multiple=16).stages()] == [128, 176, 240, 288]


def test_epochs_need_steps_per_epoch():
    sched = parse_obj({"kind": "progressive_schedule", "name": "t", "convention": "automl", "total_epochs": 350,
                       "image_size": {"end": 300}}, ProgressiveSchedule)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        sched.stages()
    assert sched.stages(steps_per_epoch=1256144 / 4096)[-1].end_step == 107_336
