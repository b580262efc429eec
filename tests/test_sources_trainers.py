"""The three trainers on data that stays on disk: an ImageNet-layout folder and the same images as Parquet
shards, validating on the val/ split. Same documents and seed, same final state (float64, <= 1e-9) as the
oracle, and the same record of held-out figures; the folder and the shards give the same run."""

import numpy as np
import pytest

from asserts import assert_same_states, trainer_states
from effv2_adapters.train_check import check_schedule, check_training
from effv2_train.data import open_split
from effv2_reference.train import Trainer
from effv2_train.trainloop import ProgressiveLoop
from effv2_spec.documents import parse_obj
from effv2_spec.presets import load as load_preset
from source_trees import write_imagenet_layout, write_shards

SIZE = 24
OPTIONS = dict(num_classes=10, channels=3)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = write_imagenet_layout(tmp_path_factory.mktemp("imagenet"), 6, 2)  # 18 train, 6 val
    shards = tmp_path_factory.mktemp("shards")
    write_shards(shards, root / "train", "train", shards=3, row_group=4)
    write_shards(shards, root / "val", "validation", shards=1)
    return {"folder": open_split(str(root), None, **OPTIONS), "parquet": open_split(str(shards), None, **OPTIONS)}


def docs():
    return (load_preset("efficientnetv2-nano"), parse_obj(check_schedule(4, SIZE)),
            parse_obj(check_training("sgd", 8, 4)))


@pytest.fixture(scope="module")
def oracle(sources):
    run = Trainer(*docs(), *sources["folder"], seed=1, dtype="float64", checkpoint_every=None)
    run.run()
    return run


def assert_same(ref, got, tol=1e-9):
    assert_same_states(ref, got, tol)
    assert [h["loss"] for h in ref.history] == pytest.approx([h["loss"] for h in got.history], rel=1e-12)
    assert [h["heldout_accuracy"] for h in ref.history] == [h["heldout_accuracy"] for h in got.history]


def test_the_oracle_runs_the_same_from_a_folder_and_from_shards(sources, oracle):
    assert [len(d) for d in sources["folder"]] == [18, 6]
    assert [h["image_size"] for h in oracle.history] == [16, 24]
    shards = Trainer(*docs(), *sources["parquet"], seed=1, dtype="float64", checkpoint_every=None)
    shards.run()
    assert_same(oracle, shards, tol=0.0)
    assert not np.allclose(trainer_states(oracle)["model"]["stem.conv.weight"], 0)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["folder", "parquet"])
def test_torch_equals_the_oracle(sources, oracle, kind):
    from effv2_adapters.torch.train import make_torch_backend

    make, _ = make_torch_backend(dtype="float64", device="cpu", precision="float32", channels_last=False,
                                 compile=False)
    run = ProgressiveLoop(*docs(), *sources[kind], make, seed=1, dtype="float64", checkpoint_every=None,
                          workers=2 if kind == "parquet" else 0)
    run.run()
    assert_same(oracle, run)


@pytest.mark.jax
@pytest.mark.parametrize("kind", ["folder", "parquet"])
def test_jax_equals_the_oracle(sources, oracle, kind):
    from effv2_adapters.jax.train import make_jax_backend

    make, _ = make_jax_backend(dtype="float64", device="cpu", precision="float32")
    run = ProgressiveLoop(*docs(), *sources[kind], make, seed=1, dtype="float64", checkpoint_every=None)
    run.run()
    assert_same(oracle, run)
