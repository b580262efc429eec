"""tests/jax: every test here needs jax, flax and optax; the whole folder is skipped without them.

XLA's CPU backend spends most of a test's time compiling (the forward+backward of a small
EfficientNet is ~400 kernels); LLVM optimisation level 0 halves that and changes no result
beyond rounding (float64 stays within 1e-13 of the oracle). Set before jax initialises its
backend; an explicit XLA_FLAGS setting of the same option wins.
"""

import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import pytest  # noqa: E402

pytest.importorskip("jax")
pytest.importorskip("flax.nnx")
pytest.importorskip("optax")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/jax/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.jax)
