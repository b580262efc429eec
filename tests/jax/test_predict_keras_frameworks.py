"""`effv2 predict` on converted Keras weights = Keras itself; the oracle, torch and JAX agree on one image.

Keras: a random-weight `keras.applications.EfficientNetV2B0(weights=None, classifier_activation=None)`
(BN statistics randomised) saved as `.weights.h5`, converted with `effv2 convert --from keras`,
run by `effv2 predict efficientnetv2-b0-keras` (the oracle) on scikit-learn's photos. Keras runs on
the same files prepared as its documentation does it: `keras.utils.load_img(path,
target_size=(224, 224))` (whole image, nearest), `img_to_array`, `preprocess_input` (a
pass-through for V2: the model rescales and normalises inside). Keras on its torch backend when
torch is installed (as tests/jax/test_jax_keras.py).

Frameworks: one photo through `effv2 predict --framework reference|torch|jax`: float64 logits agree
within 1e-9, float32 within 1e-4 of the float64 oracle (the check tolerances).
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from effv2_spec.architecture import ArchitectureSpec
from effv2_cli import main
from effv2_spec.documents import parse_obj

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def all_logits(result: dict, n: int) -> np.ndarray:
    z = np.full(n, np.nan)
    for t in result["top"]:
        z[t["class"]] = t["logit"]
    assert not np.isnan(z).any()
    return z


def test_predict_matches_keras_with_its_own_preprocessing(tmp_path):
    assert importlib.util.find_spec("keras") and importlib.util.find_spec("h5py")
    os.environ.setdefault("KERAS_BACKEND", "torch" if importlib.util.find_spec("torch") else "jax")
    import keras

    paths = list(sklearn_datasets.load_sample_images().filenames)
    model = keras.applications.EfficientNetV2B0(weights=None, classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape[0]  # gamma scaled into [0.4, 0.96]: a well-conditioned random net
            layer.set_weights([rng.uniform(0.4, 0.96, n).astype("float32"), rng.normal(0, 0.1, n).astype("float32"),
                               rng.normal(0, 0.1, n).astype("float32"), rng.uniform(0.5, 1.5, n).astype("float32")])
    model.save_weights(tmp_path / "b0.weights.h5")
    x = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224))) for p in paths])
    theirs = np.asarray(model.predict(keras.applications.efficientnet_v2.preprocess_input(x), verbose=0), np.float64)
    r = CliRunner().invoke(main, ["convert", "--from", "keras", str(tmp_path / "b0.weights.h5"),
                                  "--spec", "efficientnetv2-b0-keras", "-o", str(tmp_path / "w.safetensors")])
    assert r.exit_code == 0, r.output
    out = run("predict", "efficientnetv2-b0-keras", "-w", tmp_path / "w.safetensors", *paths,
              "--framework", "reference", "--top", 1000, "--json")
    for res, z in zip(out["results"], theirs):
        ours = all_logits(res, 1000)
        err = np.max(np.abs(ours - z)) / np.max(np.abs(z))
        print(f"keras {res['image'].rsplit('/', 1)[-1]}: max rel logit error {err:.2e}")
        assert err < 1e-4
        assert [t["class"] for t in res["top"][:5]] == list(np.argsort(-z)[:5])


def test_one_image_gives_the_same_logits_in_every_framework(tmp_path):
    from effv2_reference.model import ReferenceModel
    from effv2_spec.weights import save_weights

    doc = {"name": "frameworks", "num_classes": 20,
           "input": {"channels": 3, "train_image_size": 48, "eval_image_size": 50,
                     "eval_preprocessing": {"resize": "shorter_side", "interpolation": "bicubic",
                                            "crop_fraction": 0.9}},
           "stem": {"kernel": 3, "stride": 2, "channels": 8},
           "stages": [
               {"type": "fused_mbconv", "kernel": 3, "stride": 1, "expand_ratio": 1.0, "out_channels": 8, "repeats": 1},
               {"type": "fused_mbconv", "kernel": 3, "stride": 2, "expand_ratio": 2.0, "out_channels": 16,
                "repeats": 1},
               {"type": "mbconv", "kernel": 5, "stride": 2, "expand_ratio": 3.0, "out_channels": 24, "repeats": 2,
                "se_ratio": 0.25}],
           "head": {"channels": 40}}
    spec = parse_obj(doc, ArchitectureSpec)
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    state = ReferenceModel(spec, dtype="float64", seed=4).state_dict()
    rng = np.random.default_rng(4)
    for name, v in state.items():
        if name.endswith("running_mean") or name.endswith("bn.bias") or name == "classifier.bias":
            state[name] = rng.normal(0, 0.2, v.shape)
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 1.5, v.shape)
    save_weights(tmp_path / "w.safetensors", spec, state)
    photo = sklearn_datasets.load_sample_images().filenames[1]  # 640 x 427, eval size 50 (odd/even stride-2 inputs)
    logits = {}
    for framework in ("reference", "torch", "jax"):
        for dtype in ("float64", "float32"):
            out = run("predict", tmp_path / "spec.json", "-w", tmp_path / "w.safetensors", photo,
                      "--framework", framework, "--dtype", dtype, "--top", 20, "--json")
            logits[framework, dtype] = all_logits(out["results"][0], 20)
    exact = logits["reference", "float64"]
    scale = np.max(np.abs(exact))
    for (framework, dtype), z in logits.items():
        err = np.max(np.abs(z - exact)) / scale
        print(f"{framework} {dtype} vs oracle float64: {err:.2e}")
        assert err <= (1e-9 if dtype == "float64" else 1e-4)
