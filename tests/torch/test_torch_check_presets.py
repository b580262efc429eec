"""`effv2 check` passes for every architecture preset (torch vs the NumPy oracle) at small sizes.

float64 with the full set of checks (tolerance 1e-9) on the small presets and one of each dialect;
float32 (torch float32 against the float64 oracle) on the mid-size ones; the biggest presets run
eval logits and gradients only, once, in float64 (their float32 rounding error alone is ~1e-4 on
logits at these sizes). Sizes keep >= 2x2 at the last stage: at 1x1 with batch 2 every BN of the
last stage normalises two numbers, and the problem is too ill-conditioned to compare anything.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from effv2_spec import presets
from effv2_spec.cli import main


FULL_F64 = {  # preset: image size (odd and even sizes both appear; >= 2x2 at the last stage)
    "efficientnetv2-nano": 33, "efficientnetv2-micro": 64, "efficientnetv2-b0": 64,
    "efficientnetv2-s": 64, "efficientnetv2-s-torchvision": 64, "efficientnet-b0": 65, "efficientnetv2-b0-keras": 64,
}
FULL_F32 = {"efficientnetv2-b1": 65, "efficientnetv2-b2": 64, "efficientnetv2-b3": 64,
            "efficientnet-b1": 64, "efficientnet-b2": 65, "efficientnet-b3": 64,
            "efficientnetv2-b1-keras": 64, "efficientnetv2-b2-keras": 65, "efficientnetv2-b3-keras": 64}
EVAL_GRADS_F64 = {"efficientnetv2-m": 64, "efficientnetv2-l": 64, "efficientnetv2-xl": 64,
                  "efficientnetv2-m-torchvision": 64, "efficientnetv2-l-torchvision": 65,
                  "efficientnet-b4": 64, "efficientnet-b5": 64, "efficientnet-b6": 64, "efficientnet-b7": 64,
                  "efficientnetv2-s-keras": 64, "efficientnetv2-m-keras": 65, "efficientnetv2-l-keras": 64}

CASES = ([(n, s, "float64", None) for n, s in FULL_F64.items()]
         + [(n, s, "float32", None) for n, s in FULL_F32.items()]
         + [(n, s, "float64", "eval_logits,gradients") for n, s in EVAL_GRADS_F64.items()])


# presets whose network is another preset's: the timm dialect states timm's evaluation transform and
# training defaults (dropout 0, drop path 0, unbiased running variance) on the official tf_ network
SAME_NETWORK = {f"efficientnetv2-{v}-timm": f"efficientnetv2-{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")}


def test_every_architecture_preset_is_covered():
    covered = set(FULL_F64) | set(FULL_F32) | set(EVAL_GRADS_F64) | set(SAME_NETWORK)
    assert covered == {n for n in presets.names() if presets.kind(n) == "architecture"}


@pytest.mark.parametrize("name", sorted(SAME_NETWORK))
def test_same_network_presets_resolve_to_the_checked_table(name):
    from effv2_adapters.predict import check_compatible
    from effv2_spec.resolve import resolve

    spec, other = presets.load(name), presets.load(SAME_NETWORK[name])
    check_compatible(spec, other, name)  # every field that changes eval logits is equal
    assert [(p.name, p.shape) for p in resolve(spec).params] == [(p.name, p.shape) for p in resolve(other).params]


@pytest.mark.parametrize("name,size,dtype,checks", CASES, ids=[c[0] for c in CASES])
def test_check_preset(name, size, dtype, checks):
    args = ["check", name, "--framework", "torch", "--dtype", dtype, "--image-size", str(size), "--json"]
    if checks:
        args += ["--checks", checks]
    result = CliRunner().invoke(main, args)
    report = json.loads(result.stdout)
    summary = {c["check"]: (c["worst_tensor"], c["worst_rel_err"]) for c in report["checks"]}
    assert result.exit_code == 0 and report["passed"], summary
