"""`effv2 check --framework jax`: the conformance harness (jit-compiled forward and gradient, optax) vs the oracle.

Every check (eval / train logits, gradients, running statistics, SGD and RMSProp updates) in
float64 (tolerance 1e-9) and float32 (1e-4 logits, 1e-3 the rest). XLA compilation dominates the
time (tens of seconds for a B0-sized forward+backward on two CPU cores), so the presets here are
nano (both dtypes), V2-B0 in the Keras dialect (in-model normalisation, truncated-normal init) and
V1-B0 (float32); the other presets are measured with the CLI (docs/jax.md); sizes keep >= 2x2 at the last stage (at 1x1 with
batch 2 every last-stage BN normalises two numbers and nothing can be compared, in any framework).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from effv2_adapters.check import run_check
from effv2_spec.cli import main
from effv2_spec.documents import load_architecture


pytestmark = pytest.mark.jax

CASES = [  # (preset, image size, dtype)
    ("efficientnetv2-nano", 33, "float64"),
    ("efficientnetv2-nano", 40, "float32"),
    ("efficientnetv2-b0-keras", 64, "float64"),
    ("efficientnet-b0", 65, "float32"),
]


@pytest.mark.parametrize("name,size,dtype", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_check_preset(name, size, dtype):
    report = run_check(load_architecture(name), "jax", dtype=dtype, image_size=size)
    summary = {c.check: (c.worst_tensor, c.worst_rel_err) for c in report.checks}
    assert report.passed and len(report.checks) == 6, summary


def test_cli_check_json():
    result = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", "jax", "--dtype", "float64",
                                       "--image-size", "33", "--checks", "eval_logits,sgd,rmsprop", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["framework"] == "jax" and report["passed"]
    assert [c["check"] for c in report["checks"]] == ["eval_logits", "sgd", "rmsprop"]
