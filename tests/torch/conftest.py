"""tests/torch: every test here needs torch; the whole folder is skipped without it."""

import pytest

pytest.importorskip("torch")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/torch/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.torch)
