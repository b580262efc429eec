"""tests/conformance: every registered backend against the oracle, and third-party backends.

Backends are parametrised from the registry; one whose framework is not installed is skipped
(and a skip fails under CI, see tests/conftest.py). XLA compiles at LLVM optimisation level 0
here too (see tests/jax/conftest.py): half the compile time, results unchanged beyond rounding.
"""

import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
