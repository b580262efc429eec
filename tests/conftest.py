"""Shared test configuration: hypothesis profiles and markers.

Profiles: `ci` (default; bounded, derandomised, no deadline because first calls
compile Numba kernels or trace JAX) and `thorough` (many more examples). Choose with
EFFV2_HYPOTHESIS_PROFILE=thorough or pytest --hypothesis-profile=thorough.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=12,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("EFFV2_HYPOTHESIS_PROFILE", "ci"))
