"""Untrusted .npz files, image folders and checkpoints: every damaged, forged or oversized input
is one DataError / CheckpointError line, checked before anything large is allocated."""

import io
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

from effv2_train.checkpoint import (FILENAME, Checkpoint, CheckpointError, load_checkpoint, meta_problem,
                                        prepare_out_dir, save_checkpoint)
from effv2_train.data.sources import DataError, load_npz, open_source, split
from effv2_train.npzfile import NpzError, read_npz


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


GOOD_DATA = _npz_bytes(images=np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3),
                       labels=np.array([0, 1, 0, 1, 0, 1]))
META = {"spec": "{}", "schedule": "{}", "training": "{}", "seed": 0, "dtype": "float32", "step": 3,
        "total_steps": 10, "history": [], "partial": {}}


def _checkpoint_bytes(tmp_path, meta=META) -> bytes:
    path = tmp_path / "ck.npz"
    save_checkpoint(path, Checkpoint(dict(meta), {"stem.conv.weight": np.ones((2, 3))}, {"step": np.array(3)}))
    return path.read_bytes()


def _header_only_member(shape, descr) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@given(st.data())
def test_truncated_or_flipped_npz_is_an_npz_error_or_reads(tmp_path_factory, data):
    blob = bytearray(GOOD_DATA)
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    path = tmp_path_factory.mktemp("z") / "d.npz"
    path.write_bytes(bytes(blob))
    try:
        arrays = read_npz(path)
    except NpzError as exc:
        assert "\n" not in str(exc)
    else:  # a flip the format cannot detect (inside the zip comment, say): the arrays still have their shapes
        assert arrays["images"].shape == (6, 4, 4, 3)


@given(st.binary(max_size=300))
def test_random_bytes_are_not_called_pickled_data(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("r") / "d.npz"
    path.write_bytes(blob)
    with pytest.raises(DataError) as info:
        load_npz(path, 10, 3)
    assert "pickle" not in str(info.value)


@given(st.floats(0.0, 0.999))
def test_a_truncated_checkpoint_is_a_checkpoint_error(tmp_path_factory, fraction):
    folder = tmp_path_factory.mktemp("c")
    blob = _checkpoint_bytes(folder)
    (folder / FILENAME).write_bytes(blob[: int(len(blob) * fraction)])
    with pytest.raises(CheckpointError, match="checkpoint"):
        load_checkpoint(folder / FILENAME)


def test_a_plain_npy_is_named(tmp_path):
    path = tmp_path / "d.npz"
    np.save(path.open("wb"), np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="a single .npy array, not an .npz archive"):
        load_npz(path, 10, 3)


@pytest.mark.parametrize("shape", [(300_000, 1000, 1000, 3), (2**40,)])
def test_a_forged_header_is_refused_before_allocating(tmp_path, shape):
    path = tmp_path / "hb.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", _header_only_member(shape, "|u1"))
        z.writestr("labels.npy", _header_only_member((10,), "<i8"))
    with pytest.raises(DataError, match="declares a"):
        load_npz(path, 10, 3)


def test_arrays_larger_than_the_memory_budget_are_refused(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(GOOD_DATA)
    with pytest.raises(NpzError, match="declare more than"):
        read_npz(path, budget=100)


def test_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(NpzError, match="Python objects"):
        read_npz(path)


def test_reading_matches_numpy_for_every_layout(tmp_path):
    arrays = {"c": np.arange(12.0).reshape(3, 4), "f": np.asfortranarray(np.arange(6).reshape(2, 3)),
              "s": np.float32(2.5), "e": np.zeros((0, 3)), "r": np.array([(1, 2.0)], dtype="i4,f8")}
    path = tmp_path / "a.npz"
    np.savez_compressed(path, **arrays)
    got = read_npz(path)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)


def _png(width: int, height: int) -> bytes:
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width", [30_000, 12_000])  # over twice Pillow's limit (an error), and over it (a warning)
def test_decompression_bombs_in_a_folder_are_refused(tmp_path, width):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.png").write_bytes(_png(width, 10_000))
    with pytest.raises(DataError, match="too large to decode safely"):
        open_source(str(tmp_path), num_classes=10, channels=3)


@given(st.binary(max_size=120))
def test_random_bytes_as_an_image_are_a_data_error(tmp_path_factory, blob):
    root = tmp_path_factory.mktemp("img")
    for cls in ("a", "b"):
        (root / cls).mkdir()
        (root / cls / "x.png").write_bytes(blob)
    with pytest.raises(DataError, match="x.png"):
        open_source(str(root), num_classes=10, channels=3)


def test_empty_data_path_is_named():
    with pytest.raises(DataError, match="empty path"):
        open_source("", num_classes=10, channels=3)


def test_split_does_not_walk_every_possible_class():
    # num_classes 10^12 once made the held-out split loop for hours
    data = load_npz_from_bytes(GOOD_DATA, num_classes=10**12)
    train, heldout = split(data)
    assert len(train) + len(heldout) == 6 and len(heldout) == 2


def load_npz_from_bytes(blob, num_classes):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "d.npz"
        path.write_bytes(blob)
        return load_npz(path, num_classes, 3)


# ---- checkpoint metadata ------------------------------------------------------------------------------
@pytest.mark.parametrize("change,named", [
    ({"step": -5}, "step: must be an integer >= 0"),
    ({"step": "abc"}, "step: must be an integer >= 0"),
    ({"step": 2.0}, "step: must be an integer >= 0"),
    ({"step": True}, "step: must be an integer >= 0"),
    ({"step": 11}, "beyond total_steps"),
    ({"seed": -1}, "seed"),
    ({"dtype": "float16"}, "dtype"),
    ({"history": {}}, "history"),
    ({"partial": []}, "partial"),
    ({"model_rng": {"bit_generator": "PCG64", "state": "x"}}, "model_rng"),
    ({"model_rng": "os.system"}, "model_rng"),
])
def test_damaged_metadata_is_named(tmp_path, change, named):
    blob = _checkpoint_bytes(tmp_path, dict(META, **change))
    (tmp_path / FILENAME).write_bytes(blob)
    with pytest.raises(CheckpointError, match="damaged checkpoint metadata") as info:
        load_checkpoint(tmp_path / FILENAME)
    assert named in str(info.value)


@pytest.mark.parametrize("key", ["spec", "step", "total_steps", "seed", "dtype", "history"])
def test_missing_metadata_is_named(key):
    meta = {k: v for k, v in META.items() if k != key}
    assert meta_problem(meta) == f"{key}: missing"


def test_valid_metadata_and_generator_state_pass(tmp_path):
    state = np.random.default_rng(3).bit_generator.state
    assert meta_problem(dict(META, model_rng=json.loads(json.dumps(state)))) is None
    (tmp_path / FILENAME).write_bytes(_checkpoint_bytes(tmp_path))
    ck = load_checkpoint(tmp_path / FILENAME)
    assert ck.meta["step"] == 3 and np.array_equal(ck.model["stem.conv.weight"], np.ones((2, 3)))


# ---- the output folder -----------------------------------------------------------------------------
@pytest.mark.parametrize("held", [FILENAME, "weights.safetensors"])
def test_a_folder_of_an_earlier_run_is_refused_without_resume_or_overwrite(tmp_path, held):
    (tmp_path / held).write_bytes(b"finished run")
    with pytest.raises(CheckpointError, match="use --resume or --overwrite"):
        prepare_out_dir(tmp_path, "x", resume=False, overwrite=False)
    assert (tmp_path / held).read_bytes() == b"finished run"
    assert prepare_out_dir(tmp_path, "x", resume=True, overwrite=False) == tmp_path
    prepare_out_dir(tmp_path, "x", resume=False, overwrite=True)
    assert (tmp_path / held).read_bytes() == b"finished run"  # replaced only by the new run's first checkpoint


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    stale = tmp_path / f".{FILENAME}.k1ll3d.tmp"
    stale.write_bytes(b"half")
    mine = tmp_path / "notes.tmp"
    mine.write_bytes(b"user file")
    prepare_out_dir(tmp_path, "x", resume=False, overwrite=False, lock=True)  # under the lock: no writer is alive
    assert not stale.exists() and mine.exists()


@pytest.mark.parametrize("name", ["..", "../escaped", "a/../../b", "/abs"])
def test_the_default_folder_stays_under_runs(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="pass --out"):
        prepare_out_dir(None, name, resume=False, overwrite=False)
    assert prepare_out_dir(None, "nano", resume=False, overwrite=False).resolve() == tmp_path / "runs" / "nano"


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        prepare_out_dir(tmp_path / "f", "x", resume=False, overwrite=False)


def test_non_finite_weights_in_a_checkpoint_are_refused(tmp_path):
    path = tmp_path / FILENAME
    save_checkpoint(path, Checkpoint(dict(META), {"stem.conv.weight": np.array([1.0, np.nan])}, {}))
    with pytest.raises(CheckpointError, match="model/stem.conv.weight holds NaN"):
        load_checkpoint(path)
