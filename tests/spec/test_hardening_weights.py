"""Written files: atomic, with the mode an ordinary write gives, clear errors for impossible
targets, byte-reproducible weights; weights files whose embedded spec does not validate."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from effv2_spec import presets
from effv2_spec.weights import WeightsError, atomic_write_bytes, load_weights

NANO = presets.load("efficientnetv2-nano")


def test_a_new_file_gets_0666_less_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640


def test_an_existing_file_keeps_its_mode(tmp_path):
    target = tmp_path / "m.py"
    target.write_bytes(b"old")
    target.chmod(0o755)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("make,target,reason", [
    (lambda d: (d / "out").mkdir(), "out", "is a directory"),
    (lambda d: (d / "f").write_text("x"), "f/sub/x.py", "is a file, not a folder"),
    (lambda d: None, "newdir/", "names a folder"),
])
def test_impossible_targets_are_oserrors_naming_the_target(tmp_path, make, target, reason):
    make(tmp_path)
    path = str(tmp_path / target) + ("/" if target.endswith("/") else "")
    with pytest.raises(OSError) as info:
        atomic_write_bytes(path, b"x")
    assert reason in info.value.strerror and info.value.filename.rstrip("/") == path.rstrip("/")
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_refused_temporary_file_is_reported_as_the_target(tmp_path, monkeypatch):
    # as an unprivileged user in a read-only folder: mkstemp fails with the temporary's name
    def refuse(dir, prefix, suffix):
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "abc" + suffix))

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        atomic_write_bytes(tmp_path / "x.py", b"x")
    assert info.value.filename == str(tmp_path / "x.py") and info.value.strerror == "Permission denied"


def _save_in_subprocess(path) -> None:
    code = ("import numpy as np; from effv2_spec import presets; from effv2_spec.weights import save_weights; "
            f"save_weights({str(path)!r}, presets.load('efficientnetv2-nano'), "
            "{'b': np.arange(3, dtype=np.float32), 'a': np.ones((2, 2))}, {'z': '1', 'c': '2'})")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_weights_files_are_byte_reproducible_across_processes(tmp_path):
    # the metadata order came from a per-process hash seed; four processes all but surely showed it
    paths = [tmp_path / f"w{i}.safetensors" for i in range(4)]
    for p in paths:
        _save_in_subprocess(p)
    assert len({p.read_bytes() for p in paths}) == 1
    header = json.loads(paths[0].read_bytes()[8:8 + int.from_bytes(paths[0].read_bytes()[:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    spec, tensors = load_weights(paths[0])
    assert spec == NANO and np.array_equal(tensors["b"], np.arange(3, dtype=np.float32))


@pytest.mark.parametrize("embedded", ["{}", "not json", json.dumps({"name": "x", "kind": "architecture"})])
def test_an_invalid_embedded_spec_is_a_weights_error(tmp_path, embedded):
    from safetensors.numpy import save_file

    path = tmp_path / "c.safetensors"
    save_file({"a": np.zeros(1, np.float32)}, str(path), metadata={"effv2_spec": embedded})
    with pytest.raises(WeightsError, match="the spec in its metadata"):
        load_weights(path)


def test_a_directory_is_not_a_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="is a directory"):
        load_weights(tmp_path)
