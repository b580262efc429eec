"""Hostile input to predict, eval, export, check and conformance (reliability probe 3): one line naming the file or
field and the rule, exit 1 (2 for usage), never a traceback; no external program run on an untrusted file; nothing
read without a bound; every escape sequence from a file escaped before it reaches the terminal."""

import io
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from effv2_spec import presets
from effv2_cli import main
from effv2_spec.documents import parse_obj
from effv2_spec.weights import load_weights, save_weights

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


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    """(folder, weights path, a 40x50 image) for efficientnetv2-nano."""
    from effv2_reference.model import ReferenceModel

    root = tmp_path_factory.mktemp("third")
    arch = parse_obj(NANO)
    save_weights(root / "w.safetensors", arch, ReferenceModel(arch, seed=1).state_dict())
    Image.new("RGB", (40, 50), (90, 120, 30)).save(root / "a.png")
    return root, root / "w.safetensors", root / "a.png"


def _spec_file(tmp_path, filename="c.json", **changes):
    doc = json.loads(json.dumps(NANO))
    for path, value in changes.items():
        node = doc
        *head, last = path.split("__")
        for key in head:
            node = node[key]
        node[last] = value
    (tmp_path / filename).write_text(json.dumps(doc))
    return tmp_path / filename


# ---- N1: preprocessing bounds -------------------------------------------------------------------------
def test_predict_and_eval_cap_the_image_size(nano):
    root, w, a = nano
    for command in (["predict", "efficientnetv2-nano", "-w", w, a], ["eval", "efficientnetv2-nano", "-w", w,
                                                                      "--data", root]):
        result = run(*command, "--image-size", 100_000)
        assert result.exit_code == 2 and "100000 is not in the range 1<=x<=8192" in result.output


def test_a_tiny_crop_fraction_is_refused_by_the_schema(tmp_path, nano):
    spec = _spec_file(tmp_path, input__eval_preprocessing__crop_fraction=1e-9)
    result = run("validate", spec)
    assert result.exit_code == 1 and "crop_fraction" in result.output and "0.25" in result.output
    result = run("predict", spec, "-w", nano[1], nano[2])
    assert result.exit_code == 1 and "crop_fraction" in result.output


def test_a_strip_whose_resize_would_be_huge_is_one_line_in_predict_and_skipped_in_eval(tmp_path, nano):
    strip = tmp_path / "cls" / "strip.png"
    strip.parent.mkdir()
    Image.new("RGB", (1, 3000), (10, 20, 30)).save(strip)
    spec = _spec_file(tmp_path, input__eval_preprocessing={"resize": "shorter_side", "crop_fraction": 1.0})
    result = run("predict", spec, "-w", nano[1], strip, "--image-size", 512)
    assert result.exit_code == 1
    assert one_line(result).startswith(f"{strip}: the resize before the 512 px crop would make a 512 x 1536000 image")
    Image.new("RGB", (40, 40)).save(strip.parent / "ok.png")
    result = run("eval", spec, "-w", nano[1], "--data", tmp_path, "--image-size", 512, "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["images"] == 1 and payload["skipped"][0].startswith(f"{strip}: the resize before")


# ---- N2, N3: labels and class-index files -------------------------------------------------------------
def test_labels_and_class_index_files_are_read_with_the_caps_of_spec_documents(tmp_path, nano):
    root, w, a = nano
    deep = tmp_path / "ci.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    data = tmp_path / "d"
    (data / "x").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(data / "x" / "i.png")
    result = run("eval", "efficientnetv2-nano", "-w", w, "--data", data, "--class-index", deep)
    assert result.exit_code == 1 and one_line(result) == f"{deep}: JSON nested too deeply to be a class-index file"
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(16 * 2**20 + 1)
    for labels, message in ((big, f"{big}: larger than 16 MiB"), ("/dev/zero", "/dev/zero: not a regular file"),
                            ("", "'': an empty path names no labels file")):
        result = run("predict", "efficientnetv2-nano", "-w", w, a, "--labels", labels)
        assert result.exit_code == 1 and one_line(result).startswith(message)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes_as_labels_give_names_or_one_line(tmp_path, nano, blob):
    from effv2_train.labels import LabelError, class_index, class_names

    path = tmp_path / "labels.txt"
    path.write_bytes(blob)
    for read in (lambda: class_names(10, path), lambda: class_index(["a", "b"], 10, path)):
        try:
            read()
        except LabelError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path))


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                 max_size=3),
                     max_leaves=10)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_json)
def test_random_json_as_a_class_index_maps_or_gives_one_line(tmp_path, doc):
    from effv2_train.labels import LabelError, class_index

    path = tmp_path / "ci.json"
    path.write_text(json.dumps(doc))
    try:
        mapping = class_index(["a", "b"], 10, path)
    except LabelError as exc:
        assert "\n" not in str(exc)
    else:
        assert mapping == {k: doc[k] for k in ("a", "b")}


# ---- N4, SEC3: archives with forged sizes ------------------------------------------------------------------
def _npy(shape, descr, body=b""):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + body


@pytest.mark.parametrize("members, message", [
    ({"images.npy": _npy((1, 8, 8, 3), "|u1", bytes(192)), "labels.npy": _npy((10**11,), "<i8")},
     "declares a (100000000000,) int64 array"),
    ({"images.npy": _npy((1, 30000, 30000, 3), "|u1"), "labels.npy": _npy((1,), "<i8", bytes(8))},
     "declares a (1, 30000, 30000, 3) uint8 array"),
    ({"images.npy": _npy((2, 8, 8, 3), "|u1", bytes(384)), "labels.npy": _npy((3,), "<i8", bytes(24))},
     "labels: must be 2 integers (one per image)"),
])
def test_an_eval_npz_is_read_within_its_real_sizes(tmp_path, nano, members, message):
    path = tmp_path / "lb.npz"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    tracemalloc.start()
    try:
        result = run("eval", "efficientnetv2-nano", "-w", nano[1], "--data", path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 1 and message in one_line(result)
    assert peak < 200 * 2**20  # nothing near the declared sizes was allocated


def test_a_forged_image_size_is_refused_before_reading(tmp_path, nano):
    from effv2_train.eval_data import EvalDataError, NpzSource

    path = tmp_path / "huge.npz"
    side = 9000
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("images.npy", "w", force_zip64=True) as f:
            f.write(_npy((1, side, side, 1), "|u1"))
            for _ in range(side):
                f.write(bytes(side))
        z.writestr("labels.npy", _npy((1,), "<i8", bytes(8)))
    with pytest.raises(EvalDataError, match="height and width must be at most 8192"):
        NpzSource(path, parse_obj(NANO))


@settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_truncated_eval_npz_is_one_line(tmp_path, nano, data):
    from effv2_train.eval_data import EvalDataError, open_source

    whole = tmp_path / "whole.npz"
    if not whole.exists():
        np.savez_compressed(whole, images=np.zeros((3, 16, 16, 3), np.uint8), labels=np.arange(3))
    blob = whole.read_bytes()
    cut = data.draw(st.integers(0, len(blob) - 1))
    path = tmp_path / "cut.npz"
    path.write_bytes(blob[:cut])
    with pytest.raises(EvalDataError) as info:
        source = open_source(path, parse_obj(NANO))
        for _ in source.batches(2, 32):
            pass
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


def _lying_keras(path, inflated: int, declared: int) -> None:
    """A .keras zip whose model.weights.h5 declares `declared` bytes and inflates to `inflated` zeros."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = b"".join(c.compress(bytes(2**20)) for _ in range(inflated // 2**20)) + c.flush()
    name = b"model.weights.h5"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, 0, len(data), declared, len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, 0, len(data), declared, len(name),
                          0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)


def test_a_keras_archive_that_lies_about_its_size_is_read_within_the_budget(tmp_path):
    pytest.importorskip("h5py")
    from effv2_adapters.jax.keras_import import _h5_file
    from effv2_spec.weights import WeightsError

    path = tmp_path / "lie.keras"
    _lying_keras(path, 300 * 2**20, 1000)
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match="not a readable .keras archive"):
            _h5_file(path, budget=2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20  # the old read inflated all 300 MB


# ---- N5: export ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory")])
def test_export_running_out_of_memory_is_one_line(tmp_path, nano, monkeypatch, error):
    pytest.importorskip("onnx")
    from effv2_adapters.torch import onnx_export

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(onnx_export, "export_onnx", failing)
    result = run("export", "efficientnetv2-nano", "--weights", nano[1], "-o", tmp_path / "m.onnx")
    assert result.exit_code == 1 and "--format onnx failed" in one_line(result)
    assert not (tmp_path / "m.onnx").exists()


# ---- N6, N7, G6: plug-in adapters ---------------------------------------------------------------------------
PLUGINS = {
    "raise_at_import": 'raise RuntimeError("boom at import")\n',
    "syntax_error": "def (:\n",
    "exit_at_import": "import sys\nsys.exit(3)\n",
    "bad_constructor": 'class A:\n    def __init__(self):\n        raise ValueError("no")\n',
    "bad_available": ("from effv2_adapters.oracle import ReferenceAdapter\nclass A(ReferenceAdapter):\n"
                      "    def available(self):\n        raise KeyError('k')\n"),
    "odd_available": ("from effv2_adapters.oracle import ReferenceAdapter\nclass A(ReferenceAdapter):\n"
                      "    def available(self):\n        return 3\n"),
}


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    for name, text in PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(text)
    (tmp_path / "in_check.py").write_text(
        "from effv2_adapters.oracle import ReferenceAdapter\n"
        "class Build(ReferenceAdapter):\n    def build(self, *a, **k):\n        raise TypeError('x')\n"
        "class Quit(ReferenceAdapter):\n    def forward(self, *a, **k):\n        raise SystemExit(0)\n"
        "class Nothing(ReferenceAdapter):\n    def forward_backward(self, *a, **k):\n        return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("target, message", [
    ("raise_at_import:A", "importing the adapter raised RuntimeError: boom at import"),
    ("syntax_error:A", "importing the adapter raised SyntaxError"),
    ("exit_at_import:A", "importing the adapter raised SystemExit(3)"),
    ("bad_constructor:A", "the adapter's constructor raised ValueError: no"),
    ("bad_available:A", "its available() raised KeyError: 'k'"),
    ("odd_available:A", "not available: available() returned 3"),
    ("no_such_module_q:A", "is its package installed, or its folder on PYTHONPATH?"),
])
@pytest.mark.parametrize("verb", ["check", "conformance", "check --against"])
def test_a_plugin_failing_to_load_is_one_line(plugins, target, message, verb):
    args = {"check": ["check", "efficientnetv2-nano", "--framework", target],
            "conformance": ["conformance", "--framework", target, "--examples", 1, "--out", plugins / "o"],
            "check --against": ["check", "efficientnetv2-nano", "--framework", "reference", "--against", target]}[verb]
    result = run(*args)
    option = "--against" if verb == "check --against" else "--framework"
    assert result.exit_code == 1 and one_line(result).startswith(f"{option} {target}: ") and message in result.output
    assert "pip install 'effv2[" not in result.output


@pytest.mark.parametrize("target, message", [
    ("in_check:Build", "eval_logits in_check:Build.build raised TypeError: x"),
    ("in_check:Quit", "eval_logits in_check:Quit.forward raised SystemExit(0)"),
    ("in_check:Nothing", "train_logits its results could not be used (TypeError: cannot unpack non-iterable"),
])
def test_an_adapter_that_raises_fails_the_check_naming_it(plugins, target, message):
    result = run("check", "efficientnetv2-nano", "--framework", target, "--image-size", 32, "--checks",
                 "eval_logits,train_logits,gradients")
    assert result.exit_code == 1
    last = [line for line in result.output.splitlines() if line.strip()][-1]
    assert last.startswith("FAIL: ") and message in last


# ---- N8: conformance --out ---------------------------------------------------------------------------------
def test_conformance_checks_out_before_the_search(plugins):
    (plugins / "f").write_text("x")
    for out, reason in (("f", "File exists"), ("f/x", "Not a directory"), ("/proc/effv2-x", "No such file")):
        result = run("conformance", "--framework", "in_check:Build", "--examples", 2, "--out", plugins / out
                     if not out.startswith("/") else out)
        assert result.exit_code == 1 and "cannot write there" in one_line(result) and reason in result.output


def test_a_replay_that_cannot_be_written_is_printed(plugins, monkeypatch):
    from effv2_adapters.conformance import properties

    def failing(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(properties, "atomic_write_bytes", failing)
    result = run("conformance", "--framework", "in_check:Build", "--examples", 2, "--out", plugins / "o")
    assert result.exit_code == 1
    assert "cannot write (No space left on device); the failing spec follows" in result.stderr
    spec_text = result.stdout[result.stdout.index("{"):result.stdout.rindex("}") + 1]
    assert json.loads(spec_text)["kind"] == "architecture"
    assert "replay: effv2 check " in result.stdout


# ---- SEC1: raster formats only, regular files only ------------------------------------------------------------
def test_an_eps_file_named_png_never_reaches_ghostscript(tmp_path, nano, monkeypatch):
    stub = tmp_path / "bin" / "gs"
    stub.parent.mkdir()
    stub.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'gs.log'}\n[ \"$1\" = --version ] && echo 10.0\nexit 1\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    eps = tmp_path / "data" / "cls" / "x.png"
    eps.parent.mkdir(parents=True)
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    result = run("predict", "efficientnetv2-nano", "-w", nano[1], eps)
    assert result.exit_code == 1 and one_line(result).startswith(f"{eps}: not an image Pillow can read")
    Image.new("RGB", (40, 40)).save(eps.parent / "ok.png")
    result = run("eval", "efficientnetv2-nano", "-w", nano[1], "--data", tmp_path / "data", "--json")
    payload = json.loads(result.stdout)
    assert result.exit_code == 0 and payload["images"] == 1 and payload["skipped"][0].startswith(str(eps))
    assert not (tmp_path / "gs.log").exists()


@pytest.mark.parametrize("verb", ["predict", "eval", "train"])
def test_a_fifo_or_a_device_is_refused_not_read(tmp_path, nano, verb):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    args = {"predict": ["predict", "efficientnetv2-nano", "-w", nano[1], fifo],
            "eval": ["eval", "efficientnetv2-nano", "-w", nano[1], "--data", fifo],
            "train": ["train", "--steps", "1", "--out", tmp_path / "r", "--data", "/dev/zero"]}[verb]
    done = subprocess.run([sys.executable, "-m", "effv2_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=60)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1 and "not a regular file" in lines[0], done.stderr


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["PNG", "JPEG", "TIFF", "GIF", "BMP", "WEBP"]), st.data())
def test_a_truncated_or_damaged_image_is_read_or_one_line(tmp_path, fmt, data):
    from effv2_train.preprocess import ImageError, load_image

    buf = io.BytesIO()
    Image.fromarray(np.arange(24 * 20 * 3, dtype=np.uint8).reshape(24, 20, 3)).save(buf, fmt)
    blob = buf.getvalue()
    cut = data.draw(st.integers(0, len(blob)))
    noise = data.draw(st.binary(max_size=16))
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(blob[:cut] + noise)
    try:
        img = load_image(path)
    except ImageError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
    else:
        assert img.mode == "RGB" and img.size == (20, 24)


# ---- SEC2: escapes from files -----------------------------------------------------------------------------------
def test_escape_sequences_from_a_labels_file_or_folder_names_are_escaped(tmp_path, nano):
    root, w, a = nano
    labels = tmp_path / "lab.txt"
    labels.write_text("\n".join(["a", "b", "c", "d", "e", "f\x1b]0;pwned\x07\x1b[2J", "g", "h", "i", "j"]) + "\n")
    result = run("predict", "efficientnetv2-nano", "-w", w, a, "--labels", labels, "--top", 10)
    assert result.exit_code == 0 and "\x1b" not in result.output and "\x07" not in result.output
    assert "f\\x1b]0;pwned\\x07\\x1b[2J" in result.output
    data = tmp_path / "d"
    (data / "evil\x1b]0;x\x07").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(data / "evil\x1b]0;x\x07" / "i.png")
    index = tmp_path / "ci.json"
    index.write_text(json.dumps({"other": 0}))
    result = run("eval", "efficientnetv2-nano", "-w", w, "--data", data, "--class-index", index)
    assert result.exit_code == 1 and "\x1b" not in result.output and "evil\\x1b]0;x\\x07" in one_line(result)


# ---- G1, G2: weights ---------------------------------------------------------------------------------------------
def _edited(nano, tmp_path, name, edit):
    spec, tensors = load_weights(nano[1])
    path = tmp_path / f"{name}.safetensors"
    save_weights(path, spec, edit(dict(tensors)))
    return path


def _nan(t):
    t["classifier.bias"] = np.full_like(t["classifier.bias"], np.nan)
    return t


def _negative_variance(t):
    t["head.bn.running_var"] = -t["head.bn.running_var"]
    return t


@pytest.mark.parametrize("name, edit, message", [
    ("nan", _nan, "classifier.bias holds NaN or infinite values"),
    ("negvar", _negative_variance, "head.bn.running_var holds a negative variance"),
    ("int8", lambda t: {k: v.astype(np.int8) for k, v in t.items()}, "holds int8 values; weights are floating point"),
    ("bool", lambda t: {k: v.astype(bool) for k, v in t.items()}, "holds bool values; weights are floating point"),
])
@pytest.mark.parametrize("verb", ["predict", "export", "convert"])
def test_weights_that_are_not_usable_values_are_refused_by_every_verb(tmp_path, nano, name, edit, message, verb):
    path = _edited(nano, tmp_path, name, edit)
    args = {"predict": ["predict", "efficientnetv2-nano", "-w", path, nano[2]],
            "export": ["export", "efficientnetv2-nano", "--weights", path, "-o", tmp_path / "m.onnx"],
            "convert": ["convert", "--to", "efficientnet_pytorch", path, "-o", tmp_path / "m.pth"]}[verb]
    result = run(*args)
    assert result.exit_code == 1 and message in one_line(result) and str(path) in result.output


def test_export_refuses_weights_of_another_network(tmp_path, nano):
    spec = _spec_file(tmp_path, "sym.json", conventions__padding="symmetric", name="sym")
    result = run("export", spec, "--weights", nano[1], "-o", tmp_path / "s.onnx")
    assert result.exit_code == 1
    assert "conventions.padding is 'tf_same' there and 'symmetric' here" in one_line(result)
    assert not (tmp_path / "s.onnx").exists()


# ---- S-16BIT: images scaled, not clipped ----------------------------------------------------------------------------
@pytest.mark.parametrize("array, expected", [
    (np.full((40, 50), 30000, np.uint16), round(30000 * 255 / 65535)),  # mid-grey 16-bit: 117, not white
    (np.full((40, 50), 0.5, np.float32), 128),  # float in [0, 1]
    (np.full((40, 50), 65535, np.uint16), 255),
])
def test_16_bit_and_float_images_are_scaled_to_8_bit(tmp_path, array, expected):
    from effv2_train.preprocess import load_image

    path = tmp_path / ("i.tiff" if array.dtype == np.float32 else "i.png")
    Image.fromarray(array).save(path)
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (40, 50, 3) and (pixels == expected).all()


# ---- smaller items ---------------------------------------------------------------------------------------------------
def test_empty_paths_name_nothing(nano, tmp_path, monkeypatch):
    root, w, a = nano
    monkeypatch.chdir(root)  # '' must not mean this folder
    result = run("eval", "efficientnetv2-nano", "-w", w, "--data", "")
    assert result.exit_code == 1 and one_line(result) == "--data '': an empty path names no file or folder"
    result = run("predict", "efficientnetv2-nano", "-w", w, "")
    assert result.exit_code == 1 and one_line(result) == "'': an empty path names no image"
    result = run("predict", "efficientnetv2-nano", "-w", "", a)
    assert result.exit_code == 1 and "'': an empty path names no weights file" in one_line(result)
    result = run("export", "efficientnetv2-nano", "--weights", w, "-o", "")
    assert result.exit_code == 2 and "'-o' / '--output': an empty path names no file" in result.output
    assert not list(root.glob("*.onnx"))


def test_train_refuses_an_eval_size_below_the_total_stride(tmp_path):
    result = run("train", "--steps", "1", "--eval-size", 1, "--out", tmp_path / "r")
    assert result.exit_code == 2 and "must be >= the network's total stride 8 (got 1)" in result.output
    assert not (tmp_path / "r").exists()
