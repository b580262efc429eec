"""Keras 3 EfficientNetV2 weights -> canonical tensors: the oracle reproduces the Keras model's logits.

What is compared: a `keras.applications.EfficientNetV2B0(weights=None, classifier_activation=None)`
(random kernels; BN gamma, beta, moving mean and variance randomised too) on raw [0, 255] pixels,
with Keras's own preprocessing in the model (Rescaling 1/255 + ImageNet Normalization), at a
non-square size with odd and even stride-2 inputs. Its pre-softmax logits from `model.predict`
(float32) against the float64 oracle running the imported tensors under the
`efficientnetv2-b0-keras` preset (in-model normalisation, TF SAME, BN eps 1e-3). Keras's default
`classifier_activation="softmax"` would only add a softmax on top.

Keras runs on the torch backend when torch is installed (no XLA compilation of the whole model;
Keras pads TF-SAME on every backend), else on jax; KERAS_BACKEND, when set, wins.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from click.testing import CliRunner

from effv2_cli import main
from effv2_spec.documents import load_architecture
from effv2_spec.weights import WeightsError, load_weights

from jax_testlib import rel

pytestmark = pytest.mark.jax

SIZE = (67, 74)  # stem 67 odd -> (1, 1) padding, 74 even -> (0, 1): both TF SAME cases


@pytest.fixture(scope="module")
def keras_b0(tmp_path_factory):
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    if importlib.util.find_spec("h5py") is None:
        pytest.skip("h5py is not installed")
    os.environ.setdefault("KERAS_BACKEND", "torch" if importlib.util.find_spec("torch") else "jax")
    keras = pytest.importorskip("keras")
    model = keras.applications.EfficientNetV2B0(weights=None, input_shape=(*SIZE, 3), classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.2, n).astype("float32"), rng.normal(0, 0.1, n).astype("float32"),
                               rng.normal(0, 0.1, n).astype("float32"), rng.uniform(0.5, 1.5, n).astype("float32")])
    x = rng.uniform(0, 255, (2, *SIZE, 3)).astype("float32")
    logits = np.asarray(model.predict(x, verbose=0))
    root = tmp_path_factory.mktemp("keras")
    model.save_weights(root / "b0.weights.h5")
    model.save(root / "b0.keras")
    return root, x, logits


@pytest.mark.parametrize("filename", ["b0.weights.h5", "b0.keras"])
def test_imported_keras_b0_gives_the_keras_logits(keras_b0, filename):
    from effv2_adapters.jax.keras_import import import_keras
    from effv2_reference.model import ReferenceModel

    root, x, keras_logits = keras_b0
    spec = load_architecture("efficientnetv2-b0-keras")
    tensors = import_keras(root / filename, spec)
    oracle = ReferenceModel(spec, dtype="float64")
    oracle.load_state_dict(tensors)
    logits = oracle.forward(x.transpose(0, 3, 1, 2).astype(np.float64))
    assert rel(keras_logits, logits) < 1e-5  # Keras float32 against the exact answer (measured ~6e-7)


def test_wrong_variant_or_spec_is_a_clear_error(keras_b0, tmp_path):
    from effv2_adapters.jax.keras_import import import_keras

    root, _, _ = keras_b0
    with pytest.raises(WeightsError, match="efficientnetv2-b1-keras"):
        import_keras(root / "b0.weights.h5", load_architecture("efficientnetv2-b1-keras"))
    with pytest.raises(WeightsError, match="normalises its input in the model"):
        import_keras(root / "b0.keras", load_architecture("efficientnetv2-b0"))
    bogus = tmp_path / "x.weights.h5"
    bogus.write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="not an HDF5"):
        import_keras(bogus, load_architecture("efficientnetv2-b0-keras"))


def test_cli_convert_from_keras(keras_b0, tmp_path):
    root, _, _ = keras_b0
    out = tmp_path / "b0.safetensors"
    result = CliRunner().invoke(main, ["convert", "--from", "keras", str(root / "b0.keras"), "--spec",
                                       "efficientnetv2-b0-keras", "-o", str(out)])
    assert result.exit_code == 0, result.output
    spec, tensors = load_weights(out)
    assert spec.name == "efficientnetv2-b0-keras" and "blocks.5.se.reduce.weight" in tensors
