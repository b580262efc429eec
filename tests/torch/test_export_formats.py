"""`effv2 export --format onnx|torch-export --image-size H W`: both formats, non-square, give the oracle's logits.

The reference is the NumPy oracle in float64 with the same canonical weights (calibrated BN running
statistics), at 67 x 97: both odd, and the height halves to 34 (even), so one axis meets TF "SAME"'s
asymmetric (0, 1) pad at the next stride-2 layer while the other stays symmetric (97 -> 49 -> 25).
The graphs are traced with batch 2 and run with 3 and 1 (the batch axis is dynamic).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from effv2_adapters.conformance import conformance_tensors
from effv2_reference.model import ReferenceModel
from effv2_cli import main
from effv2_spec.resolve import resolve
from effv2_spec.weights import save_weights

from asserts import assert_close
from shared_specs import tiny_spec

SIZE = (67, 97)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(spec, canonical tensors, folder with spec.json and w.safetensors)."""
    root = tmp_path_factory.mktemp("export")
    spec = tiny_spec()
    rng = np.random.default_rng(0)
    tensors = conformance_tensors(spec, resolve(spec, SIZE), 0, rng.standard_normal((4, 3, *SIZE)))
    save_weights(root / "w.safetensors", spec, tensors)
    (root / "spec.json").write_text(spec.model_dump_json())
    return spec, tensors, root


def _export(root, fmt, out, *size):
    return CliRunner().invoke(main, ["export", str(root / "spec.json"), "--weights", str(root / "w.safetensors"),
                                     "--format", fmt, "-o", str(out), "--image-size", *map(str, size)])


def _oracle(spec, tensors, x):
    oracle = ReferenceModel(resolve(spec, x.shape[2:]), dtype="float64")
    oracle.load_state_dict(tensors)
    return oracle.forward(x, training=False)


def test_torch_export_pt2_equals_the_oracle_at_a_non_square_size(exported, tmp_path):
    spec, tensors, root = exported
    out = tmp_path / "tiny.pt2"
    result = _export(root, "torch-export", out, *SIZE)
    assert result.exit_code == 0, result.output
    assert f"input (batch, 3, {SIZE[0]}, {SIZE[1]}), dynamic batch" in result.output
    extra = {"effv2_spec": ""}
    program = torch.export.load(str(out), extra_files=extra)
    assert json.loads(extra["effv2_spec"]) == json.loads(spec.model_dump_json())
    x = np.random.default_rng(1).standard_normal((3, 3, *SIZE))
    want = _oracle(spec, tensors, x)
    for batch in (3, 1):
        with torch.no_grad():
            got = program.module()(torch.tensor(x[:batch], dtype=torch.float32)).numpy()
        assert got.shape == (batch, 5)
        assert_close(f"torch.export logits (batch {batch}) vs the oracle", got, want[:batch], 1e-5)


def test_onnx_equals_the_oracle_at_a_non_square_size(exported, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    spec, tensors, root = exported
    out = tmp_path / "tiny.onnx"
    result = _export(root, "onnx", out, *SIZE)
    assert result.exit_code == 0, result.output
    assert f"input (batch, 3, {SIZE[0]}, {SIZE[1]})" in result.output
    x = np.random.default_rng(2).standard_normal((3, 3, *SIZE))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape[1:]] == [3, *SIZE]
    got = session.run(["logits"], {"images": x.astype(np.float32)})[0]
    assert_close("onnxruntime logits vs the oracle", got, _oracle(spec, tensors, x), 1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_a_size_below_the_total_stride_is_one_line_and_writes_nothing(exported, tmp_path, fmt):
    _, _, root = exported
    out = tmp_path / "m.out"
    result = _export(root, fmt, out, 7, 97)  # the tiny spec's total stride is 8
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--image-size: must be >= the network's total stride 8 (got 7 x 97)" in lines[0]
    assert os.listdir(tmp_path) == []
    usage = _export(root, fmt, out, 0)
    assert usage.exit_code == 2 and os.listdir(tmp_path) == []


def test_a_failing_export_leaves_no_file(exported, tmp_path, monkeypatch):
    _, _, root = exported

    def refuse(*args, **kwargs):
        raise RuntimeError("serialisation refused\nsecond line of detail")

    monkeypatch.setattr(torch.export, "save", refuse)
    result = _export(root, "torch-export", tmp_path / "m.pt2", 64)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "serialisation refused" in result.output
    assert os.listdir(tmp_path) == []
