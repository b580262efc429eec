"""Shared test configuration: hypothesis profiles, markers, and no skips under CI.

Profiles: `ci` (default; bounded, derandomised, no deadline because first calls
compile Numba kernels or trace JAX) and `thorough` (many more examples). Choose with
EFFV2_HYPOTHESIS_PROFILE=thorough or pytest --hypothesis-profile=thorough.
"""

import os
import tempfile

import pytest
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

# folder indexes (effv2_train.data.folder_index) of the tests' temporary trees go to a temporary cache,
# set before any test or subprocess starts, so the suite never writes into the user's ~/.cache
os.environ["EFFV2_CACHE_DIR"] = tempfile.mkdtemp(prefix="effv2-test-cache-")


def pytest_runtest_makereport(item, call):
    """Under CI (CI=true) a skipped test fails: `.ci/run` installs every extra, so a skip there
    can only mean a dependency went missing, and a silently skipped case proves nothing."""
    if call.when != "setup" and call.when != "call":
        return None
    if _under_ci() and call.excinfo is not None \
            and call.excinfo.errisinstance(pytest.skip.Exception):
        from _pytest.reports import TestReport

        report = TestReport.from_item_and_call(item, call)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI: {call.excinfo.value}"
        return report
    return None


_SKIPPED_MODULES: list[str] = []


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collectreport(report):
    """The same for a whole module skipped at import (`pytest.importorskip` at module level)."""
    if _under_ci() and report.skipped:
        _SKIPPED_MODULES.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED_MODULES and exitstatus == 0:
        print(f"\nskipped under CI (a dependency is missing): {', '.join(_SKIPPED_MODULES)}")
        session.exitstatus = 1
