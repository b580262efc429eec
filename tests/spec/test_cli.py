"""The spec subcommands through click's runner and, for import isolation, a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from effv2_spec import presets
from effv2_cli import main

SPECS = Path(__file__).resolve().parents[2] / "specs"


def run(*args):
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_validate_every_preset_file():
    files = sorted(str(p) for p in SPECS.glob("*.json"))
    assert len(files) >= 30
    result = run("validate", *files)
    assert result.exit_code == 0, result.output
    assert result.output.count(": valid ") == len(files)


BAD_CASES = {
    "malformed.json": ('{\n  "name": "x",\n  stages: []\n}', "malformed JSON at line 3, column 3"),
    "empty.json": ("", "file is empty"),
    "array.json": ("[1, 2]", "must be a JSON object"),
    "even_kernel.json": (None, "stages[1].kernel: must be odd"),
}


def write_spec(tmp_path, name, mutate):
    doc = json.loads((SPECS / "efficientnetv2-nano.json").read_text())
    mutate(doc)
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["stages"][1].update(kernel=4), "stages[1].kernel: must be odd (got 4)"),
    (lambda d: d["stages"][1].update(kernel=0), "stages[1].kernel: Input should be greater than or equal to 1"),
    (lambda d: d["stages"][0].update(stride=3), "stages[0].stride: Input should be 1 or 2 (got 3)"),
    (lambda d: d["stages"][2].update(out_channels=-8),
     "stages[2].out_channels: Input should be greater than or equal to 1"),
    (lambda d: d["stages"][2].update(expand_ratio=0.5),
     "stages[2].expand_ratio: Input should be greater than or equal to 1"),
    (lambda d: d["stages"][2].update(se_ratio=0), "stages[2].se_ratio: Input should be greater than 0"),
    (lambda d: d["stages"][2].update(se_ratio=1.5), "stages[2].se_ratio: Input should be less than or equal to 1"),
    (lambda d: d["stem"].update(chanels=8), "stem.chanels: unknown field (did you mean 'channels'?)"),
    (lambda d: d["stages"][0].update(kernal=3), "stages[0].kernal: unknown field (did you mean 'kernel'?)"),
    (lambda d: d["head"].update(channels="wide"), "head.channels: Input should be a valid integer"),
    (lambda d: d["input"].update(train_image_size=7),
     "input.train_image_size: must be >= the network's total stride 8 (got 7)"),
    (lambda d: d["stages"][0].update(type="resnet"), "stages[0].type: unknown type 'resnet'"),
    (lambda d: d.pop("stem"), "stem: required field is missing"),
])
def test_validate_reports_field_and_rule(tmp_path, mutate, expected):
    path = write_spec(tmp_path, "bad.json", mutate)
    result = run("validate", path)
    assert result.exit_code == 1
    assert f"{path}: {expected}" in result.output
    assert "Traceback" not in result.output


def test_validate_bad_files_each_reported(tmp_path):
    (tmp_path / "malformed.json").write_text('{\n  "name": "x",\n  stages: []\n}')
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "binary.json").write_bytes(b"\x89PNG\x00\x01\x02")
    (tmp_path / "latin1.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "sched.json").write_text(json.dumps({
        "kind": "progressive_schedule", "name": "s", "convention": "paper", "total_steps": 3, "num_stages": 5,
        "image_size": {"end": 64}}))
    (tmp_path / "sched0.json").write_text(json.dumps({
        "kind": "progressive_schedule", "name": "s", "convention": "paper", "total_steps": 3, "num_stages": 0,
        "image_size": {"end": 64}}))
    names = ["malformed.json", "empty.json", "binary.json", "latin1.json", "dir.json", "missing.json", "sched.json",
             "sched0.json"]
    result = run("validate", *(str(tmp_path / n) for n in names), str(SPECS / "efficientnetv2-s.json"))
    assert result.exit_code == 1
    out = result.output
    assert "malformed.json: malformed JSON at line 3, column 3" in out
    assert "empty.json: file is empty" in out
    assert "binary.json: binary file" in out
    assert "latin1.json: not UTF-8 text" in out
    assert "dir.json: is a directory" in out
    assert "missing.json: no such file" in out
    assert "sched.json: num_stages: must not exceed total_steps (5 stages > 3 steps)" in out
    assert "sched0.json: num_stages: Input should be greater than or equal to 1" in out
    assert "efficientnetv2-s.json: valid architecture" in out
    assert "Traceback" not in out


def test_validate_imports_neither_numba_torch_nor_jax():
    code = (
        "import sys\n"
        "from effv2_cli import main\n"
        "try:\n"
        "    main(['validate', '-q', 'efficientnetv2-s', 'progressive-efficientnetv2-s-paper', 'training-official'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "heavy = sorted(m for m in ('numba', 'torch', 'jax', 'flax') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_presets_json_lists_every_kind():
    listing = json.loads(run("presets", "--json").output)
    kinds = {p["name"]: p["kind"] for p in listing}
    for name in ["efficientnetv2-b0", "efficientnetv2-b3", "efficientnetv2-s", "efficientnetv2-xl",
                 "efficientnet-b0", "efficientnet-b7", "efficientnetv2-s-torchvision", "efficientnetv2-nano"]:
        assert kinds[name] == "architecture"
    for model in "sml":
        for conv in ("paper", "automl"):
            assert kinds[f"progressive-efficientnetv2-{model}-{conv}"] == "progressive_schedule"
    assert kinds["training-official"] == "training"
    assert set(kinds) == set(presets.names())


def test_summary_json_gives_published_counts():
    data = json.loads(run("summary", "efficientnetv2-s", "--json").output)
    assert (data["params"], data["macs"], data["image_size"]) == (21_458_488, 8_365_617_152, 384)
    assert data["params_with_buffers"] == 21_612_360
    assert len([b for b in data["blocks"] if b["name"].startswith("blocks.")]) == 40
    assert sum(b["params"] for b in data["blocks"]) == data["params"]
    assert sum(b["macs"] for b in data["blocks"]) == data["macs"]
    small = json.loads(run("summary", str(SPECS / "efficientnetv2-s.json"), "--image-size", "300", "--json").output)
    assert round(small["macs"] / 1e9, 2) == 5.31


def test_summary_table_and_errors(tmp_path):
    result = run("summary", "efficientnetv2-b0")
    assert result.exit_code == 0 and "7,139,704" in result.output
    result = run("summary", "efficientnetv2-sx")
    assert result.exit_code == 1 and "no such file or preset 'efficientnetv2-sx'" in result.output
    assert "did you mean" in result.output
    result = run("summary", "progressive-efficientnetv2-s-paper")
    assert result.exit_code == 1 and "expected an architecture spec" in result.output
    result = run("summary", "efficientnetv2-s", "--image-size", "16")
    assert result.exit_code == 1
    assert result.output.strip() == "efficientnetv2-s: --image-size: must be >= the network's total stride 32 (got 16)"


def test_schedule_json_and_plot(tmp_path):
    data = json.loads(run("schedule", "progressive-efficientnetv2-m-automl", "--json").output)
    assert [s["image_size"] for s in data["stages"]] == [192, 256, 320, 384]
    assert {"steps", "randaugment_magnitude", "mixup_alpha", "cutmix_alpha"} <= set(data["stages"][0])
    assert sum(s["steps"] for s in data["stages"]) == data["total_steps"] == 107_336
    pytest.importorskip("matplotlib", reason="--plot needs the plot extra")
    png = tmp_path / "plot.png"
    result = run("schedule", "progressive-efficientnetv2-s-paper", "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_epochs_without_steps_per_epoch_is_an_error(tmp_path):
    path = tmp_path / "epochs.json"
    path.write_text(json.dumps({"kind": "progressive_schedule", "name": "e", "convention": "automl",
                                "total_epochs": 10, "image_size": {"start": 32, "end": 64}}))
    result = run("schedule", str(path))
    assert result.exit_code == 1 and "steps_per_epoch" in result.output
    ok = run("schedule", str(path), "--steps-per-epoch", "100", "--json")
    assert json.loads(ok.output)["total_steps"] == 1000


@pytest.mark.parametrize("kind, title", [("architecture", "ArchitectureSpec"), ("schedule", "ProgressiveSchedule"),
                                         ("training", "TrainingConfig")])
def test_schema_is_json_schema_with_field_docs(kind, title):
    schema = json.loads(run("schema", kind).output)
    assert schema["title"] == title
    text = json.dumps(schema)
    assert "description" in text and "additionalProperties" in text


def test_schema_files_in_docs_are_up_to_date():
    docs = Path(__file__).resolve().parents[2] / "docs" / "schema"
    for kind in ("architecture", "schedule", "training"):
        assert json.loads((docs / f"{kind}.json").read_text()) == json.loads(run("schema", kind).output), (
            f"docs/schema/{kind}.json is stale: regenerate with `effv2 schema {kind} > docs/schema/{kind}.json`")
