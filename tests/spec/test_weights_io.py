"""Canonical safetensors files: round trip, spec in metadata, clear mismatch errors, atomicity."""

import numpy as np
import pytest

from effv2_spec import presets, resolve
from effv2_spec.weights import WeightsError, check_tensors, load_weights, save_weights


def random_tensors(resolved, seed=0):
    rng = np.random.default_rng(seed)
    tensors = {p.name: rng.standard_normal(p.shape).astype(np.float32) for p in resolved.params}
    return {k: np.abs(v) if k.endswith("running_var") else v for k, v in tensors.items()}  # variances are >= 0


def test_round_trip_keeps_tensors_and_spec(tmp_path):
    spec = presets.load("efficientnetv2-nano")
    tensors = random_tensors(resolve(spec))
    save_weights(tmp_path / "w.safetensors", spec, tensors)
    loaded_spec, loaded = load_weights(tmp_path / "w.safetensors")
    assert loaded_spec == spec
    assert set(loaded) == set(tensors)
    for k in tensors:
        np.testing.assert_array_equal(loaded[k], tensors[k])
    assert not list(tmp_path.glob(".*tmp"))


def test_check_tensors_names_missing_extra_and_misshaped():
    r = resolve(presets.load("efficientnetv2-nano"))
    tensors = random_tensors(r)
    del tensors["blocks.2.se.reduce.bias"]
    tensors["blocks.9.dw.conv.weight"] = np.zeros(3)
    tensors["stem.conv.weight"] = np.zeros((16, 3, 5, 5))
    with pytest.raises(WeightsError) as err:
        check_tensors(r, tensors)
    msg = str(err.value)
    assert "missing 1 tensor(s): blocks.2.se.reduce.bias" in msg
    assert "unexpected 1 tensor(s): blocks.9.dw.conv.weight" in msg
    assert "stem.conv.weight: expected shape (16, 3, 3, 3), got (16, 3, 5, 5)" in msg


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(bad)
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(tmp_path / "missing.safetensors")
