"""Training loop and `effv2 train`: learning, bit-identical resume, NaN stop, CLI errors and --json."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from effv2_cli import main
from effv2_spec.documents import parse_obj
from effv2_spec.presets import load as load_preset
from effv2_spec.resolve import resolve
from effv2_train.checkpoint import load_checkpoint
from effv2_train.data import load_digits, split
from effv2_reference.train import Trainer, TrainingDiverged, evaluate, stage_view

SIZE = 16


def tiny_spec(dropout=0.1):
    doc = json.loads(load_preset("efficientnetv2-nano").model_dump_json())
    doc["input"]["train_image_size"] = doc["input"]["eval_image_size"] = SIZE
    doc["head"]["dropout"] = dropout
    doc["name"] = "nano-16"
    return parse_obj(doc)


def schedule(steps, stages=2, regs=None, start=SIZE):
    return parse_obj({"kind": "progressive_schedule", "name": "tiny", "convention": "paper", "total_steps": steps,
                      "num_stages": stages, "image_size": {"start": start, "end": SIZE, "multiple": 4},
                      "regularizers": regs or {}})


def recipe(**over):
    doc = {"kind": "training", "name": "tiny", "batch_size": 32, "label_smoothing": 0.0, "ema": None,
           "optimizer": {"type": "sgd", "momentum": 0.9, "nesterov": True},
           "learning_rate": {"base": 0.8, "reference_batch_size": 256, "warmup_epochs": 0.1,
                             "decay": {"type": "cosine"}},
           "weight_decay": {"rate": 1e-5},
           # digits: a flip or a crop changes the class
           "augmentation": {"random_resized_crop": None, "horizontal_flip": False}}
    doc.update(over)
    return parse_obj(doc)


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    # as `effv2 train` runs by default: small GEMMs, and no spin-waiting threads on a busy machine
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def digits():
    train_set, held = split(load_digits(SIZE))
    return train_set, held


def test_tiny_run_learns(digits):
    train_set, held = digits
    trainer = Trainer(tiny_spec(), schedule(40), recipe(), train_set, held, seed=0)
    untrained = evaluate(trainer.model, held, SIZE)
    result = trainer.run()
    assert untrained < 0.3  # ten balanced classes: about 0.1
    assert [s["steps"] for s in result.stages] == [20, 20]
    assert result.stages[1]["loss"] < result.stages[0]["loss"]
    assert result.final_accuracy > 0.8, result.stages


def test_stage_view_sets_dropout_and_drop_path():
    base = resolve(tiny_spec())
    view = stage_view(base, {"dropout": 0.3, "drop_path_rate": 0.0, "mixup_alpha": 0.5})
    assert view.classifier.dropout == 0.3 and all(b.drop_path_rate == 0.0 for b in view.blocks)
    assert view.params == base.params


REGS = {"randaugment_magnitude": {"start": 2, "end": 8}, "mixup_alpha": {"start": 0, "end": 0.3},
        "dropout": {"start": 0.1, "end": 0.3}, "drop_path_rate": {"start": 0.1, "end": 0.2}}
RMS_EMA = dict(optimizer={"type": "rmsprop", "lr_in_momentum": True}, ema={"decay": 0.99},
               label_smoothing=0.1, learning_rate={"base": 0.05, "warmup_epochs": 0.5,
                                                   "decay": {"type": "exponential", "every_epochs": 0.5}})


def test_resume_is_bit_identical(digits, tmp_path):
    train_set, held = digits
    train_set = train_set.subset(np.arange(160), "digits:train")
    args = (tiny_spec(), schedule(12, stages=3, regs=REGS, start=8), recipe(**RMS_EMA), train_set, held)
    full = Trainer(*args, seed=3, out_dir=tmp_path / "full", checkpoint_every=5)
    full.run()

    class Interrupt(Exception):
        pass

    def stop_at_7(step, total, loss):
        if step == 7:
            raise Interrupt

    first = Trainer(*args, seed=3, out_dir=tmp_path / "cut", checkpoint_every=5)
    with pytest.raises(Interrupt):
        first.run(on_step=stop_at_7)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.npz").meta["step"] == 5  # mid-stage checkpoint
    resumed = Trainer(*args, seed=3, out_dir=tmp_path / "cut", checkpoint_every=5)
    resumed.resume()
    assert resumed.step == 5
    res = resumed.run()
    assert res.steps == 12 and [s["stage"] for s in res.stages] == [0, 1, 2]
    for k, v in full.model.state_dict().items():
        assert np.array_equal(v, resumed.model.state_dict()[k]), k
    for k, v in full.ema.shadow.items():
        assert np.array_equal(v, resumed.ema.shadow[k]), k
    # a checkpoint is refused by a run on other data or with another seed
    from effv2_train.checkpoint import CheckpointError
    other_data = digits[0].subset(np.arange(1, 161), "digits:train")
    with pytest.raises(CheckpointError, match="different data"):
        Trainer(args[0], args[1], args[2], other_data, held, seed=3, out_dir=tmp_path / "cut").resume()
    with pytest.raises(CheckpointError, match="seed 3"):
        Trainer(*args, seed=5, out_dir=tmp_path / "cut").resume()
    # and the run really was random: a different seed ends elsewhere
    other = Trainer(*args, seed=4)
    other.run()
    assert not np.array_equal(other.model.params["classifier.weight"], full.model.params["classifier.weight"])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    train_set, held = digits
    # lr 100 per image = 3200 at batch 32, after a 2-step warm-up (step 0 runs at lr 0: a checkpoint is safe)
    cfg = recipe(learning_rate={"base": 100.0, "reference_batch_size": 1, "warmup_epochs": 0.05,
                                "decay": {"type": "constant"}})
    trainer = Trainer(tiny_spec(), schedule(40), cfg, train_set, held, seed=0, out_dir=tmp_path, checkpoint_every=1)
    with pytest.raises(TrainingDiverged) as exc:
        trainer.run()
    msg = str(exc.value)
    assert ("loss became" in msg or "non-finite" in msg) and "last good checkpoint" in msg
    ck = load_checkpoint(tmp_path / "checkpoint.npz")
    assert 1 <= ck.meta["step"] < 40
    assert all(np.isfinite(v).all() for v in ck.model.values())


def test_data_workers_and_bn_groups_change_nothing_but_speed(digits):
    """The same run with 0, 2 or 4 data workers ends bit-identical (every draw is keyed by step and row)."""
    train_set, held = digits
    train_set = train_set.subset(np.arange(128), "digits:train")
    regs = dict(REGS, cutmix_alpha={"start": 0.5, "end": 1.0})
    cfg = recipe(batch_norm={"group_size": 8}, augmentation={
        "random_resized_crop": {"area": [0.5, 1.0]}, "horizontal_flip": True, "mix_group_size": 16}, **RMS_EMA)
    args = (tiny_spec(), schedule(6, stages=2, regs=regs, start=8), cfg, train_set, held)
    runs = []
    for workers in (0, 2, 4):
        t = Trainer(*args, seed=7, workers=workers, checkpoint_every=None)
        t.run()
        runs.append(t)
    for other in runs[1:]:
        for k, v in runs[0].model.state_dict().items():
            assert np.array_equal(v, other.model.state_dict()[k]), k
    # and the groups were real: a run with whole-batch BN statistics ends elsewhere
    whole = Trainer(args[0], args[1], recipe(augmentation=cfg.augmentation.model_dump(mode="json"), **RMS_EMA),
                    train_set, held, seed=7, checkpoint_every=None)
    whole.run()
    assert not np.allclose(whole.model.params["classifier.weight"], runs[0].model.params["classifier.weight"])


def test_frozen_bn_keeps_statistics_and_trains_the_rest(digits):
    train_set, held = digits
    cfg = recipe(batch_norm={"mode": "frozen"})
    t = Trainer(tiny_spec(), schedule(4, stages=1), cfg, train_set, held, seed=1, checkpoint_every=None)
    before = t.model.state_dict()
    t.run()
    after = t.model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(np.array_equal(before[k], after[k]) for k in stats)
    assert not np.array_equal(before["stem.bn.weight"], after["stem.bn.weight"])  # gamma still trains
    assert not np.array_equal(before["classifier.weight"], after["classifier.weight"])
    frozen_all = recipe(batch_norm={"mode": "frozen", "freeze_affine": True})
    t = Trainer(tiny_spec(), schedule(4, stages=1), frozen_all, train_set, held, seed=1, checkpoint_every=None)
    t.run()
    gammas = [k for k in before if k.endswith((".bn.weight", ".bn.bias"))]
    assert all(np.array_equal(before[k], t.model.state_dict()[k]) for k in gammas)
    assert not np.array_equal(before["classifier.weight"], t.model.params["classifier.weight"])


# ---- the command line --------------------------------------------------------------------------
def invoke(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)])


def tiny_npz(path, n=24, size=16, labels=None, dtype=np.uint8):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3)).astype(dtype)
    np.savez(path, images=images, labels=np.arange(n) % 10 if labels is None else labels)
    return path


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def test_cli_bad_spec(tmp_path):
    doc = json.loads(load_preset("efficientnetv2-nano").model_dump_json())
    doc["stages"][0]["kernel"] = 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    one_line_error(invoke(bad), "bad.json", "stages[0].kernel")


def test_cli_bad_data(tmp_path):
    one_line_error(invoke("--data", tiny_npz(tmp_path / "f.npz", dtype=np.float32), "--out", tmp_path / "o"),
                   "f.npz", "uint8")
    one_line_error(invoke("--data", tiny_npz(tmp_path / "l.npz", labels=np.arange(24)), "--out", tmp_path / "o"),
                   "l.npz", "labels", "[0, 10)")
    np.savez(tmp_path / "s.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4, int))
    one_line_error(invoke("--data", tmp_path / "s.npz", "--out", tmp_path / "o"), "s.npz", "4-D NHWC")


def test_cli_json_then_resume_with_another_spec(tmp_path):
    data = tiny_npz(tmp_path / "d.npz", n=40)
    out = tmp_path / "run"
    r = invoke("--data", data, "--out", out, "--steps", 3, "--json", "--seed", 1)
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert {"final_accuracy", "seconds", "stages"} <= set(payload)
    assert 0.0 <= payload["final_accuracy"] <= 1.0 and payload["seconds"] > 0
    assert [s["image_size"] for s in payload["stages"]] == [16, 32]  # the default schedule's two stages
    assert (out / "checkpoint.npz").is_file() and (out / "weights.safetensors").is_file()
    one_line_error(invoke("efficientnetv2-micro", "--data", data, "--out", out, "--steps", 3, "--resume"),
                   "different spec", "efficientnetv2-nano")
    # the same run resumes (it is complete, so nothing is left to train)
    r = invoke("--data", data, "--out", out, "--steps", 3, "--json", "--seed", 1, "--resume")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["final_accuracy"] == payload["final_accuracy"]


def test_cli_resume_without_checkpoint(tmp_path):
    one_line_error(invoke("--data", tiny_npz(tmp_path / "d.npz", n=40), "--out", tmp_path / "empty", "--steps", 3,
                          "--resume"), "no checkpoint")


def image_folder(root, classes=5, per_class=6, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(40 * c + 30, 20, (size, size + 3, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def test_cli_fine_tunes_from_weights_with_a_new_classifier_and_frozen_bn(tmp_path):
    from effv2_spec.weights import load_weights

    first = tmp_path / "pre"
    r = invoke("--data", tiny_npz(tmp_path / "d.npz", n=40), "--out", first, "--steps", 3)
    assert r.exit_code == 0, r.output
    _, pre = load_weights(first / "weights.safetensors")
    folder = image_folder(tmp_path / "flowers")
    out = tmp_path / "ft"
    r = invoke("efficientnetv2-nano", "--init-from", first / "weights.safetensors", "--num-classes", 5,
               "--frozen-bn", "--data", folder, "--out", out, "--steps", 3, "--json")
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert payload["init_from"]["new_init"] == ["classifier.weight", "classifier.bias"]
    ck = load_checkpoint(out / "checkpoint.npz")
    assert ck.meta["init_from"]["path"] == str(first / "weights.safetensors")
    assert ck.model["classifier.weight"].shape == (5, pre["classifier.weight"].shape[1])
    # frozen BN: the running statistics are still exactly the pretrained ones
    stats = [k for k in pre if k.endswith(("running_mean", "running_var"))]
    assert stats and all(np.array_equal(ck.model[k], pre[k]) for k in stats)
    # and the convolutions started from the pretrained weights (they moved only by a few small steps)
    w, w0 = ck.model["stem.conv.weight"], pre["stem.conv.weight"]
    assert not np.array_equal(w, w0) and np.linalg.norm(w - w0) < 0.5 * np.linalg.norm(w0)


def test_cli_fine_tune_bad_inputs(tmp_path):
    folder = image_folder(tmp_path / "five")
    r = invoke("efficientnetv2-micro", "--data", tiny_npz(tmp_path / "d.npz", n=40), "--out", tmp_path / "m",
               "--steps", 2)
    assert r.exit_code == 0, r.output
    one_line_error(invoke("efficientnetv2-nano", "--init-from", tmp_path / "m" / "weights.safetensors",
                          "--num-classes", 5, "--data", folder, "--out", tmp_path / "x", "--steps", 2),
                   "weights.safetensors", "another network than 'efficientnetv2-nano'")
    r = invoke("--num-classes", 0, "--data", folder, "--out", tmp_path / "y")
    assert r.exit_code == 2 and "Traceback" not in r.output and "--num-classes" in r.output
    doc = json.loads(load_preset("training-cpu").model_dump_json())
    doc["batch_norm"]["group_size"] = 5
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps(doc))
    one_line_error(invoke("--training", bad, "--data", folder, "--out", tmp_path / "z"),
                   "t.json", "batch_norm.group_size: must divide batch_size")
