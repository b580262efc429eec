"""Every registered backend against the NumPy oracle: the presets at small sizes, and random specs.

One table per backend says which presets run in which dtype (the oracle dominates the time, XLA
compilation the JAX time); a backend without a table runs nano. Tolerances: float64 1e-9 on
everything; float32 1e-4 on logits, 1e-3 on the rest. Sizes keep >= 2x2 at the last stage: at 1x1
with batch 2 every last-stage BN normalises two numbers and nothing can be compared.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from effv2_adapters import registry
from effv2_adapters.conformance import CHECKS, FIELD_CHECKS, CheckError, get_framework, run_check
from effv2_adapters.conformance.properties import run_conformance
from effv2_spec import presets
from effv2_spec.documents import load_architecture

FULL_F64 = {  # preset: image size (odd and even sizes both appear)
    "efficientnetv2-nano": 33, "efficientnetv2-micro": 64, "efficientnetv2-b0": 64,
    "efficientnetv2-s": 64, "efficientnetv2-s-torchvision": 64, "efficientnet-b0": 65, "efficientnetv2-b0-keras": 64,
}
FULL_F32 = {"efficientnetv2-b1": 65, "efficientnetv2-b2": 64, "efficientnetv2-b3": 64,
            "efficientnet-b1": 64, "efficientnet-b2": 65, "efficientnet-b3": 64, "efficientnet-lite0": 64,
            "efficientnetv2-b1-keras": 64, "efficientnetv2-b2-keras": 65, "efficientnetv2-b3-keras": 64}
EVAL_GRADS_F64 = {"efficientnetv2-m": 64, "efficientnetv2-l": 64, "efficientnetv2-xl": 64,
                  "efficientnetv2-m-torchvision": 64, "efficientnetv2-l-torchvision": 65,
                  "efficientnet-b4": 64, "efficientnet-b5": 64, "efficientnet-b6": 64, "efficientnet-b7": 64,
                  "efficientnetv2-s-keras": 64, "efficientnetv2-m-keras": 65, "efficientnetv2-l-keras": 64,
                  "efficientnetv2-s-dli14": 65, "efficientnetv2-m-dli14": 64, "efficientnetv2-l-dli14": 64,
                  "efficientnetv2-xl-dli14": 65}
# presets whose network is another preset's: the timm dialect states timm's evaluation transform and
# training defaults (dropout 0, drop path 0, unbiased running variance) on the official tf_ network
SAME_NETWORK = {f"efficientnetv2-{v}-timm": f"efficientnetv2-{v}"
                for v in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")}

#: what depends on the architecture: the forward, the backward, BN statistics and the two optimisers' updates.
#: The recipe-field checks (clipping, frozen BN, decay roles, optimiser switches) and further optimisers vary
#: the recipe, not the network: they run in full on the presets of RECIPE_PRESETS, not on every dialect.
MODEL_CHECKS = ",".join(c for c in CHECKS if c not in FIELD_CHECKS and c in (
    "eval_logits", "train_logits", "gradients", "running_stats", "sgd", "rmsprop"))
RECIPE_PRESETS = {"efficientnetv2-nano", "efficientnetv2-b0-keras", "efficientnet-b0"}


def _checks(name: str, dtype: str) -> str | None:
    """Every check on the recipe presets in float64 (the field checks compare semantics, at 1e-9); the
    model checks elsewhere (in float32 two clipped steps of a deep network drift past 1e-3 on tiny tensors,
    e.g. B1's last SE bias at 1.6e-3, where the same check passes at 1e-13 in float64)."""
    return None if name in RECIPE_PRESETS and dtype == "float64" else MODEL_CHECKS


#: backend -> (preset, image size, dtype, checks or None for all)
PRESET_CASES = {
    "torch": ([(n, s, "float64", _checks(n, "float64")) for n, s in FULL_F64.items()]
              + [(n, s, "float32", _checks(n, "float32")) for n, s in FULL_F32.items()]
              + [(n, s, "float64", "eval_logits,gradients") for n, s in EVAL_GRADS_F64.items()]),
    # XLA compiles each network for tens of seconds on two cores: the small ones, official and Keras
    # dialects (symmetric padding is drawn by the random specs)
    "jax": [("efficientnetv2-nano", 33, "float64", None), ("efficientnetv2-nano", 40, "float32", MODEL_CHECKS),
            ("efficientnetv2-b0-keras", 64, "float64", None), ("efficientnet-b0", 65, "float32", MODEL_CHECKS)],
}
DEFAULT_CASES = [("efficientnetv2-nano", 33, "float64", None)]
#: random specs per backend under the `ci` profile (the `thorough` profile scales them)
EXAMPLES = {"torch": max(4, settings.default.max_examples // 2), "jax": max(2, settings.default.max_examples // 6)}

BACKENDS = [name for name in registry.framework_names() if name != "reference"]


def _marks(backend: str) -> list:
    return [getattr(pytest.mark, backend)] if backend in ("torch", "jax") else []


def _backend(name: str):
    try:
        return get_framework(name)
    except CheckError as exc:
        pytest.skip(str(exc))


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


def _preset_marks(backend: str, name: str) -> list:
    """The large presets are `slow`: the oracle's float64 forward and backward of M / L / XL / B4-B7 take
    half a minute to three minutes each, about half of the whole suite's time."""
    return _marks(backend) + ([pytest.mark.slow] if name in EVAL_GRADS_F64 else [])


PRESET_PARAMS = [pytest.param(b, *case, id=f"{b}-{case[0]}-{case[1]}-{case[2]}", marks=_preset_marks(b, case[0]))
                 for b in BACKENDS for case in PRESET_CASES.get(b, DEFAULT_CASES)]


@pytest.mark.parametrize("backend,name,size,dtype,checks", PRESET_PARAMS)
def test_preset_agrees_with_the_oracle(backend, name, size, dtype, checks):
    adapter = _backend(backend)
    selected = CHECKS if checks is None else tuple(checks.split(","))
    report = run_check(load_architecture(name), backend, dtype=dtype, image_size=size, checks=selected, adapter=adapter)
    summary = {c.check: (c.status, c.worst_tensor, c.worst_rel_err) for c in report.checks}
    assert report.passed and not report.not_run and len(report.checks) == len(selected), summary


@pytest.mark.parametrize("backend", [pytest.param(b, marks=_marks(b)) for b in BACKENDS])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_random_specs_agree_with_the_oracle(backend, dtype, tmp_path):
    """What `effv2 conformance --framework BACKEND` runs: every convention, odd sizes, every check."""
    adapter = _backend(backend)
    result = run_conformance(backend, examples=EXAMPLES.get(backend, 4), seed=0 if dtype == "float64" else 1,
                             dtype=dtype, adapter=adapter, out_dir=tmp_path)
    assert result.passed, (result.failure.error, result.command)


@pytest.mark.parametrize("backend", [pytest.param(b, marks=_marks(b)) for b in BACKENDS])
def test_cli_check_json(backend):
    import json

    from click.testing import CliRunner

    from effv2_cli import main

    _backend(backend)
    result = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", backend, "--dtype", "float64",
                                       "--image-size", "33", "--checks", "eval_logits,sgd,rmsprop", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["framework"] == backend and report["baseline"] == "reference" and report["passed"]
    assert [c["check"] for c in report["checks"]] == ["eval_logits", "sgd", "rmsprop"]


@pytest.mark.parametrize("backend", [pytest.param(b, marks=_marks(b)) for b in BACKENDS])
def test_se_convention_agrees_with_the_oracle(backend):
    """The SE gate / activation convention (hard sigmoid, relu inside SE, hard_swish elsewhere); the
    random specs above draw every combination too."""
    from shared_specs import tiny_spec

    adapter = _backend(backend)
    spec = tiny_spec(activation="hard_swish", se={"gate": "hard_sigmoid", "activation": "relu"})
    report = run_check(spec, backend, image_size=33, adapter=adapter)
    assert report.passed and not report.not_run, {c.check: (c.worst_tensor, c.worst_rel_err) for c in report.checks}
