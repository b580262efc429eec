"""Parameter and MAC counts against published figures (not against numbers this code printed).

Sources: torchvision model pages (num_params, GFLOPS), timm results-imagenet.csv,
Keras applications table (count_params incl. BN moving stats) and google/automl
effnetv2_model_test.py goldens, as collected in shared/facts.
"""

import pytest

from effv2_spec import presets, resolve
from effv2_spec.accounting import count

# trainable parameters, 1000 classes: torchvision / timm tf_ / Keras trainable (identical)
PUBLISHED_PARAMS = {
    "efficientnetv2-s": 21_458_488,
    "efficientnetv2-m": 54_139_356,
    "efficientnetv2-l": 118_515_272,
    "efficientnetv2-xl": 208_119_808,
    "efficientnetv2-b0": 7_139_704,
    "efficientnetv2-b1": 8_141_052,
    "efficientnetv2-b2": 10_096_086,
    "efficientnetv2-b3": 14_358_406,
    "efficientnetv2-s-torchvision": 21_458_488,
    "efficientnetv2-m-torchvision": 54_139_356,
    "efficientnetv2-l-torchvision": 118_515_272,
    # EfficientNet V1, torchvision efficientnet_b0..b7 num_params
    "efficientnet-b0": 5_288_548,
    "efficientnet-b1": 7_794_184,
    "efficientnet-b2": 9_109_994,
    "efficientnet-b3": 12_233_232,
    "efficientnet-b4": 19_341_616,
    "efficientnet-b5": 30_389_784,
    "efficientnet-b6": 43_040_704,
    "efficientnet-b7": 66_347_960,
}

# Keras count_params() = trainable + BN moving mean/variance = google/automl test goldens
PUBLISHED_WITH_BN_STATS = {
    "efficientnetv2-s": 21_612_360,
    "efficientnetv2-m": 54_431_388,
    "efficientnetv2-l": 119_027_848,
    "efficientnetv2-xl": 208_896_832,
    "efficientnetv2-b0": 7_200_312,
    "efficientnetv2-b1": 8_212_124,
    "efficientnetv2-b2": 10_178_374,
    "efficientnetv2-b3": 14_467_622,
    "efficientnet-b0": 5_330_564,
}

# conv + dense MACs, in G, to the digits given: S, M and L at their eval sizes as torchvision's
# EfficientNet_V2_*_Weights list GFLOPS, V1-B0 as torchvision's EfficientNet_B0_Weights; the others from a
# hand count by the block tables of google/automl (effnetv2_configs.py), TF-SAME output sizes (the digits
# shown), which agrees with google/automl's README figures (B0-B3: 0.72 / 1.2 / 1.7 / 3.0 B) where it gives one
PUBLISHED_GMACS = {
    ("efficientnetv2-s", 384): "8.37",
    ("efficientnetv2-m", 480): "24.58",
    ("efficientnetv2-l", 480): "56.08",
    ("efficientnetv2-xl", 512): "93.353",
    ("efficientnetv2-b0", 224): "0.718",
    ("efficientnetv2-b1", 240): "1.197",
    ("efficientnetv2-b2", 260): "1.698",
    ("efficientnetv2-b3", 300): "3.011",
    ("efficientnetv2-s", 300): "5.31",
    ("efficientnetv2-b0", 192): "0.528",
    ("efficientnet-b0", 224): "0.39",
}


@pytest.mark.parametrize("name, expected", sorted(PUBLISHED_PARAMS.items()))
def test_trainable_parameters_match_published(name, expected):
    resolved = resolve(presets.load(name))
    assert count(resolved).params == expected
    assert sum(p.numel for p in resolved.params if p.trainable) == expected


@pytest.mark.parametrize("name, expected", sorted(PUBLISHED_WITH_BN_STATS.items()))
def test_parameters_with_bn_statistics_match_keras_and_official_goldens(name, expected):
    assert count(resolve(presets.load(name))).params_with_buffers == expected


def test_v2s_macs_exact_at_384():
    # torchvision/timm report 8.37 GFLOPS; the exact conv+dense MAC count is 8,365,617,152
    assert count(resolve(presets.load("efficientnetv2-s"), 384)).macs == 8_365_617_152


@pytest.mark.parametrize("key, published", sorted(PUBLISHED_GMACS.items()))
def test_macs_match_published_digits(key, published):
    name, size = key
    macs = count(resolve(presets.load(name), size)).macs
    digits = len(published.split(".")[1])
    assert f"{macs / 1e9:.{digits}f}" == published


def test_21k_heads_change_only_the_classifier():
    # the published 1k count plus (1280 + 1) more weights per extra class: 48,158,371 (48.16M) with 21,843 classes
    spec = presets.load("efficientnetv2-s").model_copy(update={"num_classes": 21843})
    assert count(resolve(spec)).params == 21_458_488 + (21843 - 1000) * (1280 + 1)
