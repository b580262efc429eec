"""`effv2 export --format onnx`: the exported graph, run by onnxruntime, gives the oracle's logits.

The reference is the NumPy oracle in float64 with the same canonical weights (calibrated BN running
statistics, so eval mode is non-trivial), at an odd input size (TF "SAME" pads differ from even
sizes) and a batch other than the one traced (the batch axis is dynamic).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from effv2_adapters.conformance import conformance_tensors
from effv2_reference.model import ReferenceModel
from effv2_cli import main
from effv2_spec.resolve import resolve
from effv2_spec.weights import save_weights

from asserts import assert_close
from shared_specs import tiny_spec

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.mark.parametrize("conventions",
                         [{}, {"padding": "symmetric", "se": {"gate": "hard_sigmoid", "activation": "relu"}}],
                         ids=["official", "symmetric-hard-sigmoid"])
def test_onnx_export_equals_the_oracle_in_onnxruntime(tmp_path, conventions):
    spec, size = tiny_spec(**conventions), 33
    resolved = resolve(spec, size)
    rng = np.random.default_rng(0)
    tensors = conformance_tensors(spec, resolved, 0, rng.standard_normal((4, 3, size, size)))
    save_weights(tmp_path / "w.safetensors", spec, tensors)
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    out = tmp_path / "tiny.onnx"
    result = CliRunner().invoke(main, ["export", str(tmp_path / "spec.json"),
                                       "--weights", str(tmp_path / "w.safetensors"), "--format", "onnx",
                                       "-o", str(out), "--image-size", str(size)])
    assert result.exit_code == 0, result.output
    assert "opset 17" in result.output and "dynamic batch" in result.output

    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata["effv2_spec"]) == json.loads(spec.model_dump_json())
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic: any batch

    x = rng.standard_normal((3, 3, size, size))  # traced with batch 2
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": x.astype(np.float32)})[0]
    oracle = ReferenceModel(resolved, dtype="float64")
    oracle.load_state_dict(tensors)
    want = oracle.forward(x, training=False)
    assert got.shape == want.shape == (3, 5)
    assert_close("onnxruntime logits vs the oracle", got, want, 1e-5)


def test_export_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["export", "efficientnetv2-nano", "--weights", str(tmp_path / "none.safetensors"),
                                   "-o", str(tmp_path / "m.onnx")])
    assert missing.exit_code == 1 and "no such file" in missing.output and "Traceback" not in missing.output
    spec = tiny_spec()
    zeros = {p.name: np.zeros(p.shape, np.float32) for p in resolve(spec).params}
    save_weights(tmp_path / "w.safetensors", spec, zeros)
    other = runner.invoke(main, ["export", "efficientnetv2-nano", "--weights", str(tmp_path / "w.safetensors"),
                                 "-o", str(tmp_path / "m.onnx")])
    assert other.exit_code == 1 and "Traceback" not in other.output and not (tmp_path / "m.onnx").exists()
    fmt = runner.invoke(main, ["export", "efficientnetv2-nano", "--weights", "w", "--format", "tflite", "-o", "m"])
    assert fmt.exit_code == 2
