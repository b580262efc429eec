"""Every compiled entry point of effv2_reference.kernels has a NumPy twin in its module's `TWINS` table (or
None there with a reason in `NO_TWIN_REASONS`), and some test file under tests/ names the two together.

A compiled entry point is a Numba dispatcher or intrinsic defined in the module that is public, or
private and imported by another module of the package (kernels/network/bn_silu.py builds on
elementwise's row helpers). The check itself is tested on planted modules, so it can fail."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import sys
from pathlib import Path

import pytest
from numba.core.dispatcher import Dispatcher
from numba.core.extending import _Intrinsic

import effv2_reference.kernels as kernels

TESTS = Path(__file__).resolve().parents[1]


def _compiled(obj) -> bool:
    return isinstance(obj, (Dispatcher, _Intrinsic))


def _defined_in(obj, module) -> bool:
    fn = getattr(obj, "py_func", None) or getattr(obj, "_defn", None)
    return getattr(fn, "__module__", None) == module.__name__


def entry_points(module, users) -> list[str]:
    """The compiled functions defined in `module`: public ones, and private ones another of `users` holds."""
    names = []
    for name, obj in vars(module).items():
        if not _compiled(obj) or not _defined_in(obj, module):
            continue
        if not name.startswith("_") or any(vars(u).get(name) is obj for u in users if u is not module):
            names.append(name)
    return sorted(names)


def _twin(module, twin: str):
    """The twin named in a table: a function of the module, or 'package.module:function' elsewhere."""
    where, _, name = twin.rpartition(":")
    try:
        home = importlib.import_module(where) if where else module
    except ImportError:
        return None
    return getattr(home, name, None)


def _named(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text) is not None


def twin_problems(module, users, test_texts: dict[str, str]) -> list[str]:
    """One line per entry point of `module` without a twin, a reason or a test naming both; and per stale row."""
    twins, reasons = getattr(module, "TWINS", {}), getattr(module, "NO_TWIN_REASONS", {})
    problems = []
    for name in entry_points(module, users):
        where = f"{module.__name__}.{name}"
        if name not in twins:
            problems.append(f"{where}: not in TWINS")
        elif twins[name] is None:
            if not str(reasons.get(name, "")).strip():
                problems.append(f"{where}: no twin, and no reason in NO_TWIN_REASONS")
        elif not callable(twin := _twin(module, twins[name])) or _compiled(twin):
            problems.append(f"{where}: its twin {twins[name]} is not a NumPy function")
        elif not any(_named(t, name) and _named(t, twins[name].rpartition(":")[2]) for t in test_texts.values()):
            problems.append(f"{where}: no test file names it together with its twin {twins[name]}")
    for name in twins:
        if not (_compiled(vars(module).get(name)) and _defined_in(vars(module)[name], module)):
            problems.append(f"{module.__name__}.TWINS names {name}, not a compiled function of the module")
    return problems


def kernel_modules() -> list:
    return [importlib.import_module(info.name)
            for info in pkgutil.walk_packages(kernels.__path__, kernels.__name__ + ".") if not info.ispkg]


def _users() -> list:
    return [m for n, m in list(sys.modules.items()) if n.startswith("effv2_reference") and m is not None]


def _test_texts() -> dict[str, str]:
    return {str(p): p.read_text(encoding="utf-8") for p in TESTS.rglob("*.py") if p.name != Path(__file__).name}


def test_every_compiled_entry_point_has_a_twin_and_an_equality_test():
    modules = kernel_modules()
    users, texts = _users(), _test_texts()
    assert sum(len(entry_points(m, users)) for m in modules) >= 35  # the scan sees the kernels at all
    problems = [line for m in modules for line in twin_problems(m, users, texts)]
    assert not problems, "\n".join(problems)


def test_the_sub_packages_keep_one_job_each():
    """network and runtime hold what their docstrings say; nothing compiled is left in the package root."""
    names = {m.__name__.removeprefix("effv2_reference.kernels.") for m in kernel_modules()}
    assert {"network.elementwise", "network.bn_silu", "network.sgd", "runtime.pool", "runtime.fence"} <= names
    assert not any(n.startswith("network.") and ("pool" in n or "fence" in n) for n in names)


def test_every_kernel_sub_package_ships_in_the_wheel():
    """pyproject.toml lists packages one by one: a sub-package missing there is missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {info.name for info in pkgutil.walk_packages(kernels.__path__, kernels.__name__ + ".") if info.ispkg}
    assert found and found <= listed, sorted(found - listed)


PLANTED = '''
from numba import njit

@njit
def planted_kernel(x):
    return x + 1

@njit
def _helper(x):
    return x

def planted_naive(x):
    return x + 1
'''


@pytest.fixture
def planted(tmp_path):
    """Import source text as a throwaway module (its functions' __module__ is its name)."""
    made = []

    def load(name: str, source: str):
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        made.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in made:
        sys.modules.pop(name, None)


def test_the_check_reports_a_compiled_function_without_a_twin(planted):
    m = planted("planted_no_table", PLANTED)
    assert entry_points(m, [m]) == ["planted_kernel"]  # the private helper, used by nobody else, is not one
    assert twin_problems(m, [m], {}) == ["planted_no_table.planted_kernel: not in TWINS"]


def test_the_check_reports_a_missing_twin_a_missing_test_and_a_missing_reason(planted):
    m = planted("planted_missing_twin", PLANTED + 'TWINS = {"planted_kernel": "planted_naive_gone"}\n')
    assert twin_problems(m, [m], {"t.py": "planted_kernel planted_naive_gone"}) == [
        "planted_missing_twin.planted_kernel: its twin planted_naive_gone is not a NumPy function"]
    m = planted("planted_untested", PLANTED + 'TWINS = {"planted_kernel": "planted_naive"}\n')
    texts = {"a.py": "planted_kernel(x)", "b.py": "planted_naive(x)", "c.py": "planted_kernel_x planted_naive"}
    assert twin_problems(m, [m], texts) == [
        "planted_untested.planted_kernel: no test file names it together with its twin planted_naive"]
    assert twin_problems(m, [m], {"d.py": "assert planted_kernel(x) == planted_naive(x)"}) == []
    m = planted("planted_no_reason", PLANTED + 'TWINS = {"planted_kernel": None}\nNO_TWIN_REASONS = {}\n')
    assert twin_problems(m, [m], {}) == [
        "planted_no_reason.planted_kernel: no twin, and no reason in NO_TWIN_REASONS"]


def test_the_check_counts_a_private_helper_another_module_imports(planted):
    m = planted("planted_helper", PLANTED + 'TWINS = {"planted_kernel": "planted_naive"}\n')
    user = planted("planted_user", "from planted_helper import _helper\n")
    assert entry_points(m, [m, user]) == ["_helper", "planted_kernel"]
    assert twin_problems(m, [m, user], {"t.py": "planted_kernel planted_naive"}) == [
        "planted_helper._helper: not in TWINS"]
    stale = planted("planted_stale", PLANTED + 'TWINS = {"planted_kernel": "planted_naive", "gone": "x"}\n')
    assert twin_problems(stale, [stale], {"t.py": "planted_kernel planted_naive"}) == [
        "planted_stale.TWINS names gone, not a compiled function of the module"]
