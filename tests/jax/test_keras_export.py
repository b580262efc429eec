"""`effv2 convert --to keras`: Keras loads the `.weights.h5` effv2 writes and gives the oracle's logits.

What is compared: canonical EfficientNetV2-B0 tensors (seeded, calibrated BN statistics so eval mode is
non-trivial) written by `effv2 convert --to keras`, loaded by
`keras.applications.EfficientNetV2B0(weights=None, classifier_activation=None).load_weights(...)` on
the JAX backend (in a subprocess, so the backend is JAX whatever this process imported before), run on
raw [0, 255] pixels at 67 x 97 (odd sizes; 67 -> 34 meets TF SAME's asymmetric pad), against the
float64 oracle on the same tensors under `efficientnetv2-b0-keras` (in-model normalisation, as Keras'
`include_preprocessing=True`). Tolerance: float32, 1e-4 of the largest logit (measured ~3e-6).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from effv2_adapters.conformance import conformance_tensors
from effv2_reference.model import ReferenceModel
from effv2_cli import main
from effv2_spec.documents import load_architecture, parse_text
from effv2_spec.resolve import resolve
from effv2_spec.weights import save_weights

from jax_testlib import rel

pytestmark = pytest.mark.jax

SIZE = (67, 97)

KERAS_RUN = """
import sys, numpy as np, keras
folder, height, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = keras.applications.EfficientNetV2B0(weights=None, input_shape=(height, width, 3), classifier_activation=None)
model.load_weights(f"{folder}/b0.weights.h5")
np.save(f"{folder}/keras_logits.npy", np.asarray(model.predict(np.load(f"{folder}/x.npy"), verbose=0)))
other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
other.save_weights(f"{folder}/other.weights.h5")
print(keras.backend.backend())
"""


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory):
    """(folder, canonical tensors, input NHWC, Keras logits) after effv2 wrote b0.weights.h5 and Keras ran it."""
    for module in ("keras", "h5py"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    root = tmp_path_factory.mktemp("keras_export")
    spec = load_architecture("efficientnetv2-b0-keras")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 3, *SIZE))
    tensors = conformance_tensors(spec, resolve(spec, SIZE), 0, x)
    save_weights(root / "b0.safetensors", spec, tensors)
    result = CliRunner().invoke(main, ["convert", "--to", "keras", str(root / "b0.safetensors"),
                                       "-o", str(root / "b0.weights.h5")])
    assert result.exit_code == 0, result.output
    np.save(root / "x.npy", x.transpose(0, 2, 3, 1).astype(np.float32))
    env = dict(os.environ, KERAS_BACKEND="jax", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run([sys.executable, "-c", KERAS_RUN, str(root), *map(str, SIZE)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "jax"
    return root, tensors, x, np.load(root / "keras_logits.npy")


@pytest.mark.slow
def test_keras_loads_the_file_and_gives_the_oracle_logits(keras_run):
    from effv2_adapters.jax.keras_import import import_keras

    root, tensors, x, keras_logits = keras_run
    spec = load_architecture("efficientnetv2-b0-keras")
    oracle = ReferenceModel(resolve(spec, SIZE), dtype="float64")
    oracle.load_state_dict(tensors)
    want = oracle.forward(x, training=False)
    assert keras_logits.shape == want.shape == (2, 1000)
    assert rel(keras_logits, want) < 1e-4
    # and the file reads back (through the same table) to the float32 tensors written
    back = import_keras(root / "b0.weights.h5", spec)
    assert sorted(back) == sorted(tensors)
    assert all(np.array_equal(back[k], tensors[k].astype(np.float32)) for k in tensors)


@pytest.mark.slow
def test_a_keras_file_of_another_model_is_one_line(keras_run, tmp_path):
    root = keras_run[0]
    runner = CliRunner()
    out = tmp_path / "w.safetensors"
    for path, spec in ((root / "b0.weights.h5", "efficientnetv2-b1-keras"),
                       (root / "other.weights.h5", "efficientnetv2-b0-keras")):
        result = runner.invoke(main, ["convert", "--from", "keras", str(path), "--spec", spec, "-o", str(out)])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and spec in result.output
        assert not out.exists()


def _b0_variant(tmp_path, **conventions):
    doc = json.loads(load_architecture("efficientnetv2-b0-keras").model_dump_json())
    doc["conventions"].update(conventions)
    doc["name"] = "b0-variant"
    spec = parse_text(json.dumps(doc))
    zeros = {p.name: np.zeros(p.shape, np.float32) for p in resolve(spec).params}
    save_weights(tmp_path / "w.safetensors", spec, zeros)
    return tmp_path / "w.safetensors"


@pytest.mark.parametrize("conventions, named", [
    ({"padding": "symmetric"}, "conventions.padding: 'symmetric' (Keras: 'tf_same')"),
    ({"batch_norm": {"eps": 1e-5, "momentum": 0.1, "running_var": "biased"}},
     "conventions.batch_norm.eps: 1e-05 (Keras: 0.001)"),
])
def test_a_spec_keras_cannot_describe_is_refused_naming_the_convention(tmp_path, conventions, named):
    weights = _b0_variant(tmp_path, **conventions)
    out = tmp_path / "b0.weights.h5"
    result = CliRunner().invoke(main, ["convert", "--to", "keras", str(weights), "-o", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "closest is EfficientNetV2B0" in line and named in line
    assert not out.exists()


def test_training_only_choices_are_free_and_the_suffix_is_checked(tmp_path):
    weights = _b0_variant(tmp_path, stochastic_depth={"rate": 0.0})
    runner = CliRunner()
    wrong = runner.invoke(main, ["convert", "--to", "keras", str(weights), "-o", str(tmp_path / "b0.h5")])
    assert wrong.exit_code == 1 and ".weights.h5" in wrong.output and not (tmp_path / "b0.h5").exists()
    ok = runner.invoke(main, ["convert", "--to", "keras", str(weights), "-o", str(tmp_path / "b0.weights.h5")])
    assert ok.exit_code == 0, ok.output
