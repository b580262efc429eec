"""The `effv2` command line on hostile input: one line naming the file or field and the rule, exit 1
for bad input and 2 for usage errors, never a traceback, never a silent overwrite."""

import io
import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from effv2_spec import presets
from effv2_cli import COMMANDS, main
from effv2_spec.resolve import ConvBN, SqueezeExcite, resolve

NANO = json.loads(presets.text("efficientnetv2-nano"))


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def write(tmp_path, name, doc) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


# ---- documents ----------------------------------------------------------------------------------------
def test_validate_reports_every_file_after_an_odd_kind(tmp_path):
    files = [write(tmp_path, "kind_list.json", {"kind": []}), write(tmp_path, "stages_int.json", dict(NANO, stages=5)),
             write(tmp_path, "deep.json", None), write(tmp_path, "nano.json", NANO)]
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    result = run("validate", *files, "")
    assert result.exit_code == 1
    assert f"{files[0]}: kind: must be one of" in result.output
    assert f"{files[1]}: stages: Input should be a valid array" in result.output
    assert f"{files[2]}: JSON nested too deeply" in result.output
    assert f"{files[3]}: valid architecture" in result.output
    assert "'': an empty path names no file" in result.output


@pytest.mark.parametrize("command", [["summary"], ["generate", "--framework", "torch"], ["schedule"]])
def test_every_loader_reports_an_odd_kind_in_one_line(tmp_path, command):
    path = write(tmp_path, "k.json", {"kind": {"a": 1}})
    result = run(command[0], path, *command[1:])
    assert result.exit_code == 1 and one_line(result) == f"{path}: kind: must be one of architecture, " \
        "progressive_schedule, training (got a JSON object)"


def test_a_spec_name_with_escapes_or_a_path_is_refused(tmp_path):
    path = write(tmp_path, "esc.json", dict(NANO, name="../../escaped\x1b[31m"))
    result = run("train", path, "--steps", "1")
    assert result.exit_code == 1 and "\x1b" not in result.output
    assert one_line(result).startswith(f"{path}: name: must use only ASCII letters")
    assert not (tmp_path.parent / "escaped").exists()


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "efficientnetv2-nano").mkdir()
    result = run("summary", "efficientnetv2-nano", "--json")
    assert result.exit_code == 0
    assert "using the built-in preset; write ./efficientnetv2-nano for the folder" in result.stderr
    assert json.loads(result.stdout)["name"] == "efficientnetv2-nano"
    assert run("summary", "./efficientnetv2-nano").exit_code == 1


# ---- output errors --------------------------------------------------------------------------------------
def _targets(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    return [(tmp_path / "adir", "is a directory; give a file name"),
            (tmp_path / "afile" / "x.out", f"{tmp_path / 'afile'} is a file, not a folder")]


def test_generate_and_plot_report_write_errors_in_one_line(tmp_path):
    for target, reason in _targets(tmp_path):
        for args in (["generate", "efficientnetv2-nano", "--framework", "torch", "-o", target],
                     ["schedule", "progressive-efficientnetv2-nano-paper", "--plot", target]):
            if args[0] == "schedule" and target.is_dir():
                continue  # click's own dir_okay=False check answers first (exit 2)
            result = run(*args)
            assert result.exit_code == 1 and one_line(result) == f"{target}: cannot write ({reason})"


def test_generate_keeps_the_mode_of_an_existing_file(tmp_path):
    out = tmp_path / "m.py"
    out.write_text("old")
    out.chmod(0o644)
    assert run("generate", "efficientnetv2-nano", "--framework", "torch", "-o", out).exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o644 and "def " in out.read_text()


# ---- exit codes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["check", "efficientnetv2-nano", "--framework", "torch", "--dtype", "float16"],
    ["check", "efficientnetv2-nano", "--framework", "torch", "--oracle-dtype", "float16"],
    ["check", "efficientnetv2-nano", "--framework", "torch", "--checks", ","],
    ["check", "efficientnetv2-nano", "--framework", "torch", "--checks", "eval_logits,bogus"],
    ["check", "efficientnetv2-nano", "--framework", "mxnet"],
    ["generate", "efficientnetv2-nano", "--framework", "mxnet"],
    ["convert", "--from", "timm", "--to", "timm", "x", "-o", "y"],
    ["convert", "x", "-o", "y"],
    ["convert", "--from", "caffe", "x", "--spec", "efficientnetv2-nano", "-o", "y"],
    ["convert", "--from", "timm", "x", "-o", "y"],
    ["convert", "--to", "caffe", "x", "-o", "y"],
    ["schedule", "progressive-efficientnetv2-nano-paper", "--steps-per-epoch", "0.5"],
    ["train", "--resume", "--overwrite"],
])
def test_usage_errors_exit_2(args):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output


# ---- lazy commands and framework failures --------------------------------------------------------------
def test_a_missing_optional_dependency_is_named(monkeypatch):
    monkeypatch.setitem(COMMANDS, "ghost", "no_such_third_party_pkg.cli:command")
    result = run("ghost")
    assert result.exit_code == 1 and "needs an optional dependency that is not installed (no_such_third_party_pkg)" \
        in result.output


def test_a_broken_import_inside_effv2_surfaces(monkeypatch):
    monkeypatch.setitem(COMMANDS, "ghost", "effv2_spec.no_such_module:command")
    result = CliRunner().invoke(main, ["ghost"])
    assert isinstance(result.exception, ModuleNotFoundError) and "optional dependency" not in result.output


@pytest.mark.parametrize("error,advice", [
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),
    (MemoryError(), True),
])
def test_memory_advice_only_when_memory_is_the_cause(monkeypatch, error, advice):
    from effv2_adapters import conformance

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(conformance, "run_check", failing)
    result = run("check", "efficientnetv2-nano", "--framework", "torch")
    assert result.exit_code == 1 and ("needs less memory" in one_line(result)) == advice


# ---- convert --------------------------------------------------------------------------------------------
def test_convert_to_with_an_invalid_embedded_spec(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "c.safetensors"
    save_file({"a": np.zeros(1, np.float32)}, str(path), metadata={"effv2_spec": "{}"})
    result = run("convert", "--to", "torchvision", path, "-o", tmp_path / "o.pth")
    assert result.exit_code == 1
    assert one_line(result).startswith(f"{path}: the spec in its metadata (effv2_spec) is not valid: ")


def test_convert_names_a_directory_and_refuses_to_replace_its_input(tmp_path):
    result = run("convert", "--from", "torchvision", tmp_path, "--spec", "efficientnetv2-nano", "-o", tmp_path / "o")
    assert result.exit_code == 1 and one_line(result) == f"{tmp_path}: is a directory, not a weights file"
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"original")
    result = run("convert", "--to", "torchvision", weights, "-o", weights)
    assert result.exit_code == 1 and "-o is the input file" in one_line(result)
    assert weights.read_bytes() == b"original"


def test_a_pth_that_is_not_a_state_dict_gives_no_unsafe_advice(tmp_path):
    path = tmp_path / "r.pth"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    result = run("convert", "--from", "torchvision", path, "--spec", "efficientnetv2-nano", "-o", tmp_path / "o")
    assert result.exit_code == 1
    line = one_line(result)
    assert line.startswith(f"{path}: not a readable torch.save state dict") and "weights_only" not in line


# ---- Keras files ----------------------------------------------------------------------------------------
def _keras_weights(spec_name: str) -> bytes:
    """A Keras 3 `.weights.h5` (layers/<class>_<i>/vars/<j>) holding random weights for the spec."""
    import h5py

    resolved = resolve(presets.load(spec_name))
    rng = np.random.default_rng(0)
    counts: dict[str, int] = {}
    buf = io.BytesIO()

    def layer(f, cls, *values):
        i = counts.get(cls, 0)
        counts[cls] = i + 1
        group = f.create_group(f"layers/{cls}" + (f"_{i}" if i else "") + "/vars")
        for j, v in enumerate(values):
            group[str(j)] = v

    def rand(name, *axes):
        value = rng.standard_normal(resolved.param(name).shape).astype(np.float32)
        return value.transpose(axes) if axes else value

    with h5py.File(buf, "w") as f:
        for unit in resolved.units():
            if isinstance(unit, ConvBN):
                # the inverse of the importer's transposes: OIHW -> (kh, kw, in, out), (C, 1, k, k) -> (k, k, C, 1)
                cls, axes = ("depthwise_conv2d", (2, 3, 0, 1)) if unit.depthwise else ("conv2d", (2, 3, 1, 0))
                layer(f, cls, rand(f"{unit.name}.conv.weight", *axes))
                layer(f, "batch_normalization", *(rand(f"{unit.name}.bn.{t}") for t in
                                                  ("weight", "bias", "running_mean", "running_var")))
            elif isinstance(unit, SqueezeExcite):
                for part in ("reduce", "expand"):
                    layer(f, "conv2d", rand(f"{unit.name}.{part}.weight", 2, 3, 1, 0), rand(f"{unit.name}.{part}.bias"))
        layer(f, "dense", rand("classifier.weight", 1, 0), rand("classifier.bias"))
    return buf.getvalue()


def _keras_archive(path, weights: bytes, config=None, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        z.writestr("model.weights.h5", weights)
        if config is not None:
            z.writestr("config.json", config if isinstance(config, (str, bytes)) else json.dumps(config))


def _convert_keras(tmp_path, path):
    return run("convert", "--from", "keras", path, "--spec", "efficientnetv2-nano", "-o", tmp_path / "o.safetensors")


def test_a_generated_keras_file_imports(tmp_path):
    path = tmp_path / "good.keras"
    _keras_archive(path, _keras_weights("efficientnetv2-nano"), {"config": {"layers": []}})
    assert _convert_keras(tmp_path, path).exit_code == 0


def _edit_h5(blob: bytes, edit) -> bytes:
    import h5py

    buf = io.BytesIO(blob)
    with h5py.File(buf, "r+") as f:
        edit(f)
    return buf.getvalue()


def _vars_to_dataset(f):
    del f["layers/conv2d"]
    f["layers/conv2d"] = np.zeros(3)


def _empty_vars(f):
    del f["layers/conv2d/vars/0"]


def _renamed_vars(f):
    f.move("layers/conv2d/vars/0", "layers/conv2d/vars/kernel")


def _text_var(f):
    del f["layers/dense/vars/0"]
    f["layers/dense/vars/0"] = np.array([b"abc"])


def _wrong_rank(f):
    del f["layers/conv2d/vars/0"]
    f["layers/conv2d/vars/0"] = np.zeros(3, np.float32)


@pytest.mark.parametrize("case,message", [
    ("member_not_hdf5", "not an HDF5 / .keras file"),
    ("crc", "not a readable .keras archive"),
    ("bomb", "model.weights.h5 declares"),
    ("config_not_json", "config.json is not readable JSON"),
    ("config_list", "config.json is not a JSON object"),
    ("layers_not_objects", "config.layers is not a list of layer objects"),
    ("bad_rescale", "unreadable Rescaling / Normalization numbers"),
    ("layer_dataset", "layers/conv2d is a dataset"),
    ("empty_vars", "variable(s); expected 1"),
    ("renamed_vars", "expected 0, 1, 2"),
    ("text_var", "is not a numeric array"),
    ("wrong_rank", "has 1 dimensions; expected 4"),
])
def test_malformed_keras_files_are_one_line(tmp_path, case, message):
    good = _keras_weights("efficientnetv2-nano")
    path = tmp_path / "m.keras"
    edits = {"layer_dataset": _vars_to_dataset, "empty_vars": _empty_vars, "renamed_vars": _renamed_vars,
             "text_var": _text_var, "wrong_rank": _wrong_rank}
    configs = {"config_not_json": "{nope", "config_list": [1, 2], "layers_not_objects": {"config": {"layers": [1]}},
               "bad_rescale": {"config": {"layers": [{"class_name": "Rescaling", "config": {"scale": "abc"}}]}}}
    if case == "member_not_hdf5":
        _keras_archive(path, b"x" * 100)
    elif case == "crc":
        _keras_archive(path, good)
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0xFF  # inside the stored member: only the CRC can tell
        path.write_bytes(bytes(blob))
    elif case == "bomb":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("model.weights.h5", "w") as w:
            for _ in range(80):
                w.write(bytes(2**20))
    elif case in configs:
        _keras_archive(path, good, configs[case])
    else:
        _keras_archive(path, _edit_h5(good, edits[case]))
    result = _convert_keras(tmp_path, path)
    assert result.exit_code == 1
    line = one_line(result)
    assert line.startswith(f"{path}: ") and message in line, line


# ---- train: never overwrite a finished run, never start what cannot fit ----------------------------------
def test_train_refuses_a_folder_holding_a_run(tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"finished run")
    result = run("train", "efficientnetv2-nano", "--steps", "1", "--out", out)
    assert result.exit_code == 1
    assert one_line(result) == f"{out}: already holds checkpoint.npz from an earlier run; use --resume or --overwrite"
    assert (out / "checkpoint.npz").read_bytes() == b"finished run"


def test_train_refuses_a_spec_that_cannot_fit_before_allocating(tmp_path):
    doc = json.loads(json.dumps(NANO))
    doc["scaling"]["width"] = 16.0
    doc["head"]["channels"] = 16384
    for stage in doc["stages"]:
        stage["out_channels"] = 16384
    path = write(tmp_path, "huge.json", doc)
    result = run("train", path, "--steps", "1", "--out", tmp_path / "r")
    assert result.exit_code == 1
    line = one_line(result)
    assert line.startswith("efficientnetv2-nano: a training step at batch") and "this machine has" in line
