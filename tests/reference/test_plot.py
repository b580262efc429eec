"""`effv2 plot`: its --json series are the record's values, the PNG has the asked size, and bad
records, folders and options are one line with exit 1 (2 for usage), never a traceback."""

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, strategies as st

from effv2_cli import main
from effv2_train.data import load_digits, split
from effv2_reference.train import Trainer
from record_checks import of_type, read_record
from test_train import REGS, RMS_EMA, SIZE, recipe, schedule, tiny_spec  # tests/reference is on sys.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A progressive run (8 -> 16 px, three stages) and a fixed-size one (16 px), same steps."""
    root = tmp_path_factory.mktemp("runs")
    train_set, held = split(load_digits(SIZE))
    data = (train_set.subset(np.arange(160), "digits:160"), held.subset(np.arange(60), "digits:held"))
    for name, start in (("progressive", 8), ("fixed", SIZE)):
        Trainer(tiny_spec(), schedule(12, stages=3, regs=REGS, start=start), recipe(**RMS_EMA), *data, seed=1,
                out_dir=root / name, log_every=2).run()
    return root


def plot(*args):
    return CliRunner().invoke(main, ["plot", *map(str, args)])


def one_line_error(result, *fragments, code=1):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    if code == 1:  # usage errors (2) are click's usage text
        assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1, result.output
    for f in fragments:
        assert f in result.output, result.output


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_json_series_are_the_records_values(runs):
    r = plot(runs / "progressive", runs / "fixed" / "metrics.jsonl", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["format"] == "effv2-plot/1" and [run["name"] for run in doc["runs"]] == ["progressive", "fixed"]
    for run, folder in zip(doc["runs"], ("progressive", "fixed")):
        lines = read_record(runs / folder / "metrics.jsonl")
        steps, stages = of_type(lines, "step"), of_type(lines, "stage")
        for key, values in run["steps"].items():
            assert values == [ln[key] for ln in steps], key
        for key, values in run["stages"].items():
            want = "ema_heldout_top1" if key == "accuracy" else key
            assert values == [ln[want] for ln in stages], key
        assert (run["spec"], run["total_steps"], run["seed"]) == ("nano-16", 12, 1)
        assert [g["end_step"] for g in run["regions"]] == [4, 8, 12]
        assert [g["end_wall_seconds"] for g in run["regions"]] == [ln["wall_seconds"] for ln in stages]
    assert [g["image_size"] for g in doc["runs"][0]["regions"]] == [8, 12, 16]
    assert [g["image_size"] for g in doc["runs"][1]["regions"]] == [16, 16, 16]


def test_png_has_the_asked_size_and_is_not_overwritten_silently(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    r = plot(runs / "progressive", runs / "fixed", "-o", out, "--size", "1000x640", "--label", "prog",
             "--label", "fixed 16 px")
    assert r.exit_code == 0, r.output
    assert png_size(out) == (1000, 640)
    before = out.read_bytes()
    one_line_error(plot(runs / "fixed", "-o", out), "curves.png", "--overwrite")
    assert out.read_bytes() == before
    assert plot(runs / "fixed", "-o", out, "--overwrite", "--size", "800x500").exit_code == 0
    assert png_size(out) == (800, 500)
    assert not [p for p in tmp_path.iterdir() if p.name != "curves.png"]  # no temporary file left


def test_usage_errors(runs, tmp_path):
    one_line_error(plot(runs / "fixed"), "-o", code=2)
    one_line_error(plot(runs / "fixed", "--json", "--label", "a", "--label", "b"), "one per RUN", code=2)
    one_line_error(plot(runs / "fixed", "--json", "--size", "big"), "WIDTHxHEIGHT", code=2)
    one_line_error(plot("--json"), "RUN", code=2)


def test_bad_runs_are_one_line(runs, tmp_path):
    one_line_error(plot(tmp_path / "nowhere", "--json"), "nowhere", "no such run")
    (tmp_path / "empty").mkdir()
    one_line_error(plot(tmp_path / "empty", "--json"), "empty", "no such run")
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    one_line_error(plot(tmp_path / "empty", "--json"), "metrics.jsonl", "empty")
    lines = (runs / "fixed" / "metrics.jsonl").read_text().splitlines()
    cases = {"garbled": lines[0] + "\n{not json\n",
             "nan": lines[0] + "\n" + lines[1].replace('"loss": ', '"loss": NaN, "x": '),
             "no header": "\n".join(lines[1:]), "only header": lines[0], "list": "[1, 2]",
             "back": "\n".join([lines[0], lines[2], lines[1]]),
             "type": lines[0] + "\n" + lines[1].replace('"loss": ', '"loss": "high", "y": ')}
    for name, text in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        path.write_text(text)
        one_line_error(plot(path, "--json"), path.name)


@given(st.binary(max_size=300))
def test_random_bytes_are_one_line(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("r") / "metrics.jsonl"
    path.write_bytes(blob)
    one_line_error(plot(path, "--json"), "metrics.jsonl")


@given(st.data())
def test_truncated_records_plot_or_fail_in_one_line(runs, tmp_path_factory, data):
    raw = (runs / "progressive" / "metrics.jsonl").read_bytes()
    cut = data.draw(st.integers(0, len(raw)))
    path = tmp_path_factory.mktemp("t") / "metrics.jsonl"
    path.write_bytes(raw[:cut])
    r = plot(path, "--json")
    if r.exit_code == 0:  # cut at a line boundary after a step line: the shorter record is a record
        steps = json.loads(r.stdout)["runs"][0]["steps"]["step"]
        assert steps == [ln["step"] for ln in of_type(read_record(path), "step")]
    else:
        one_line_error(r, "metrics.jsonl")


def test_plot_imports_neither_matplotlib_nor_numba_before_drawing():
    code = ("import sys, effv2_cli.plot, effv2_train.plot; "
            "print(sorted(m for m in ('matplotlib', 'numba', 'torch', 'jax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
