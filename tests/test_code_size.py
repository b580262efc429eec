"""The size rules of the code base (issue 26): no source file over 500 lines and no function over 60, in the
packages and the benchmarks. A file or function that outgrows them is split by job, not by line count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("effv2_spec", "cli", "training", "reference", "adapters", "bench")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60


def oversized(path: Path) -> list[str]:
    source = path.read_text()
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []
    lines = source.count("\n")
    if lines > MAX_FILE_LINES:
        found.append(f"{name}: {lines} lines")
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1  # from `def` to the last line, decorators apart
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_file_or_function_over_the_limits(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, folder
    problems = [p for f in files for p in oversized(f)]
    assert not problems, "\n".join(problems)


def test_the_rule_sees_a_long_function(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    planted = tmp_path / "planted.py"
    planted.write_text("def long():\n" + body + "\n" * MAX_FILE_LINES)
    assert [p.split(" ", 1)[1] for p in oversized(planted)] == [f"{MAX_FILE_LINES + MAX_FUNCTION_LINES + 1} lines",
                                                                 f"long: {MAX_FUNCTION_LINES + 1} lines"]
