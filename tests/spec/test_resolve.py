"""The resolved block table against the official per-variant tables: the block strings of google/automl's
efficientnetv2/effnetv2_configs.py and the scaling, SE width and skip rules of effnetv2_model.py."""

import pytest

from effv2_spec import presets, resolve
from effv2_spec.architecture import CompoundScaling
from effv2_spec.resolve import ImageSizeError
from effv2_spec.rounding import round_channels, round_repeats


def stage_summary(resolved):
    """[(type, expand, stride of first, in of first, out, repeats)] per stage."""
    out = []
    for b in resolved.blocks:
        if b.position == 0:
            out.append([b.type, b.expanded_channels // b.in_channels, b.stride, b.in_channels, b.out_channels, 0])
        out[-1][5] += 1
    return [tuple(r) for r in out]


F, M = "fused_mbconv", "mbconv"

OFFICIAL_TABLES = {
    "efficientnetv2-s": (24, [(F, 1, 1, 24, 24, 2), (F, 4, 2, 24, 48, 4), (F, 4, 2, 48, 64, 4), (M, 4, 2, 64, 128, 6),
                              (M, 6, 1, 128, 160, 9), (M, 6, 2, 160, 256, 15)], 1280),
    "efficientnetv2-m": (24, [(F, 1, 1, 24, 24, 3), (F, 4, 2, 24, 48, 5), (F, 4, 2, 48, 80, 5), (M, 4, 2, 80, 160, 7),
                              (M, 6, 1, 160, 176, 14), (M, 6, 2, 176, 304, 18), (M, 6, 1, 304, 512, 5)], 1280),
    "efficientnetv2-xl": (32, [(F, 1, 1, 32, 32, 4), (F, 4, 2, 32, 64, 8), (F, 4, 2, 64, 96, 8), (M, 4, 2, 96, 192, 16),
                               (M, 6, 1, 192, 256, 24), (M, 6, 2, 256, 512, 32), (M, 6, 1, 512, 640, 8)], 1280),
    "efficientnetv2-b2": (32, [(F, 1, 1, 32, 16, 2), (F, 4, 2, 16, 32, 3), (F, 4, 2, 32, 56, 3), (M, 4, 2, 56, 104, 4),
                               (M, 6, 1, 104, 120, 6), (M, 6, 2, 120, 208, 10)], 1408),
    "efficientnetv2-b3": (40, [(F, 1, 1, 40, 16, 2), (F, 4, 2, 16, 40, 3), (F, 4, 2, 40, 56, 3), (M, 4, 2, 56, 112, 5),
                               (M, 6, 1, 112, 136, 7), (M, 6, 2, 136, 232, 12)], 1536),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_TABLES))
def test_block_table_matches_official(name):
    stem, stages, head = OFFICIAL_TABLES[name]
    r = resolve(presets.load(name))
    assert r.stem.out_channels == stem
    assert stage_summary(r) == stages
    assert r.head.out_channels == head


def test_round_channels_official_and_ten_percent_rule():
    # B3: 16 * 1.2 = 19.2 -> 16 officially (no 10% rule), 24 with torchvision's rule
    assert round_channels(16, 1.2, 8, 8, 0.0) == 16
    assert round_channels(16, 1.2, 8, 8, 0.9) == 24
    assert round_channels(1280, 1.1, 8, 8, 0.0) == 1408
    assert round_channels(3, 1.0, 8, 8, 0.0) == 8  # never below min_channels
    assert round_channels(12, 1.0, 8, 8, 0.0) == 16  # half rounds up: int(12 + 4) // 8 * 8
    assert round_repeats(3, 1.4) == 5 and round_repeats(1, 1.1) == 2 and round_repeats(8, 1.0) == 8


def test_se_width_from_block_input_not_expanded():
    r = resolve(presets.load("efficientnetv2-s"))
    stage4 = [b for b in r.blocks if b.stage == 3]
    assert (stage4[0].in_channels, stage4[0].expanded_channels, stage4[0].se_channels) == (64, 256, 16)
    assert (stage4[1].in_channels, stage4[1].expanded_channels, stage4[1].se_channels) == (128, 512, 32)
    assert all(b.se_channels == 0 for b in r.blocks if b.type == "fused_mbconv")


def test_residual_and_drop_path_rates():
    r = resolve(presets.load("efficientnetv2-s"))
    n = len(r.blocks)
    assert n == 40
    for b in r.blocks:
        assert b.residual == (b.stride == 1 and b.in_channels == b.out_channels)
        assert b.drop_path_rate == (pytest.approx(0.2 * b.index / n) if b.residual else 0.0)
    assert r.blocks[-1].drop_path_rate == pytest.approx(0.2 * 39 / 40)
    # B0's first block changes channels 32 -> 16: no residual there
    assert not resolve(presets.load("efficientnetv2-b0")).blocks[0].residual


def test_fused_expand1_layouts():
    spec = presets.load("efficientnetv2-s")
    single = resolve(spec).blocks[0]
    assert [layer.name for layer in single.layers] == ["blocks.0.fused"]
    assert single.layers[0].activation and single.layers[0].kernel == 3
    conv = spec.conventions.model_copy(update={"fused_expand1": "expand_project"})
    split = resolve(spec.model_copy(update={"conventions": conv})).blocks[0]
    assert [(layer.name, layer.kernel, layer.activation) for layer in split.layers] == [
        ("blocks.0.expand", 3, "silu"), ("blocks.0.project", 1, None)]


def test_spatial_sizes_at_odd_input():
    r = resolve(presets.load("efficientnetv2-s"), 385)
    assert r.stem.out_size == (193, 193)
    assert r.head.out_size == (13, 13)  # ceil(385 / 32)
    r = resolve(presets.load("efficientnetv2-s"), (32, 47))  # the total stride is the smallest size
    assert r.head.out_size == (1, 2)


@pytest.mark.parametrize("size, shown", [(31, "31"), ((32, 17), "32 x 17"), (0, "0")])
def test_a_size_below_the_total_stride_is_refused_naming_the_field(size, shown):
    spec = presets.load("efficientnetv2-s")  # stem 2 x five stride-2 stages: total stride 32
    rule = f"must be >= 1 (got {shown})" if size == 0 else f"must be >= the network's total stride 32 (got {shown})"
    with pytest.raises(ImageSizeError) as info:
        resolve(spec, size)
    assert str(info.value) == f"image_size: {rule}" and info.value.rule == rule


def test_v1_compound_scaling_from_phi():
    base = presets.load("efficientnet-b0")
    scaling = base.scaling.model_copy(update={"compound": CompoundScaling(phi=1.0)})
    r = resolve(base.model_copy(update={"scaling": scaling}))
    assert r.width == pytest.approx(1.1) and r.depth == pytest.approx(1.2)
    assert r.image_size == (round(224 * 1.15),) * 2
    # depth 1.2: stage repeats 1,2,2,3,3,4,1 -> 2,3,3,4,4,5,2
    assert [sum(1 for b in r.blocks if b.stage == s) for s in range(7)] == [2, 3, 3, 4, 4, 5, 2]


def test_param_table_names_are_canonical_and_unique():
    r = resolve(presets.load("efficientnetv2-b0"))
    names = [p.name for p in r.params]
    assert len(names) == len(set(names))
    assert names[0] == "stem.conv.weight" and names[-1] == "classifier.bias"
    assert r.param("blocks.5.dw.conv.weight").shape == (192, 1, 3, 3)
    assert r.param("blocks.5.se.reduce.weight").shape == (12, 192, 1, 1)
    assert r.param("classifier.weight").shape == (1000, 1280)
    assert r.param("blocks.7.dw.bn.running_var").trainable is False
