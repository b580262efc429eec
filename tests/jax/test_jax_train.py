"""The JAX trainer against the oracle: same JSON and seed, same final state (float64, <= 1e-9), on one
device, on 2 simulated devices and in 2 jax.distributed processes (BN groups inside and across devices
and processes); a run moving between the oracle, PyTorch and JAX mid-stage; its one-line refusals.

XLA compile time dominates: every in-process run here uses the same spec, sizes and recipe where it
can, so the compiled steps are shared (`effv2_adapters.jax.train._TRAIN_FNS`).
"""

import json
from pathlib import Path
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from asserts import assert_same_states, trainer_states
from effv2_cli import main
from effv2_spec.documents import parse_obj
from effv2_spec.presets import load as load_preset
from effv2_train.data import load_digits, split
from effv2_reference.train import Trainer
from effv2_train.trainloop import ProgressiveLoop
from effv2_adapters.jax.train import make_jax_backend
from effv2_adapters.train_check import (check_schedule, check_training, free_port, jax_device_env,
                                        run_train_check)

SIZE = 24
STEPS = 4


def spec():
    doc = json.loads(load_preset("efficientnetv2-nano").model_dump_json())
    doc["conventions"]["stochastic_depth"]["rate"] = 0.2
    return parse_obj(doc)


@pytest.fixture(scope="module")
def data():
    train, held = split(load_digits(SIZE))
    return train.subset(np.arange(48), "digits:48"), held.subset(np.arange(24), "digits:held")


@pytest.fixture(autouse=True, scope="module")
def no_cache(tmp_path_factory):
    """The persistent compilation cache of these runs goes to a temporary folder, and they compile their
    steps themselves: an earlier test of the session with the same documents (test_jax_record.py) left
    them compiled in memory, which would leave that folder empty."""
    import jax

    from effv2_adapters.jax import train as jax_train

    old = os.environ.get("EFFV2_JAX_CACHE")
    os.environ["EFFV2_JAX_CACHE"] = str(tmp_path_factory.mktemp("jax-cache"))
    jax_train._TRAIN_FNS.clear()
    jax.clear_caches()
    yield
    if old is None:
        os.environ.pop("EFFV2_JAX_CACHE", None)
    else:
        os.environ["EFFV2_JAX_CACHE"] = old


def docs_for(optimizer, group, steps=STEPS):
    return spec(), parse_obj(check_schedule(steps, SIZE)), parse_obj(check_training(optimizer, 16, group))


def jax_loop(docs, data, *, dtype="float64", out=None, precision="float32"):
    make, _ = make_jax_backend(dtype=dtype, device="cpu", precision=precision)
    return ProgressiveLoop(*docs, *data, make, seed=1, dtype=dtype, out_dir=out, checkpoint_every=None)


@pytest.fixture(scope="module")
def oracle_rmsprop(data):
    oracle = Trainer(*docs_for("rmsprop", 8), *data, seed=1, dtype="float64", checkpoint_every=None)
    oracle.run()
    return oracle


@pytest.fixture(scope="module")
def jax_rmsprop(data):
    """The JAX run of `oracle_rmsprop`'s documents (its compiled steps serve the other tests)."""
    run = jax_loop(docs_for("rmsprop", 8), data)
    run.run()
    return run


def frozen(training: dict) -> dict:
    return dict(training, batch_norm={"mode": "frozen", "freeze_affine": True})


@pytest.mark.parametrize("optimizer,group", [("rmsprop", 8), ("sgd-frozen-bn", 4)])
def test_one_device_equals_the_oracle(data, oracle_rmsprop, jax_rmsprop, optimizer, group):
    """RMSProp (TF), BN groups of 8; SGD (Nesterov) with frozen BN and frozen gamma / beta."""
    if optimizer == "rmsprop":
        oracle, run = oracle_rmsprop, jax_rmsprop
    else:
        docs = (spec(), parse_obj(check_schedule(STEPS, SIZE)), parse_obj(frozen(check_training("sgd", 16, group))))
        oracle = Trainer(*docs, *data, seed=1, dtype="float64", checkpoint_every=None)
        oracle.run()
        run = jax_loop(docs, data)
        run.run()
        bn = "stem.bn.weight"
        assert np.array_equal(trainer_states(run)["model"][bn], np.ones_like(trainer_states(run)["model"][bn]))
        assert not any(k.endswith(bn) for k in trainer_states(run)["optimizer"])
    parts = assert_same_states(oracle, run)
    assert {p.part for p in parts} == {"model", "optimizer", "ema"} and all(p.tensors > 25 for p in parts)
    assert [h["loss"] for h in oracle.history] == pytest.approx([h["loss"] for h in run.history], rel=1e-12)
    assert [h["heldout_accuracy"] for h in oracle.history] == [h["heldout_accuracy"] for h in run.history]
    assert [h["image_size"] for h in run.history] == [16, 24]
    assert set(run.backend.compile_seconds) <= {"16px", "24px"}


def test_a_run_moves_between_oracle_jax_and_torch_mid_stage(data, oracle_rmsprop, tmp_path):
    """oracle -> jax at step 3; jax -> oracle at step 1; torch -> jax at step 2; jax -> torch at step 3:
    every run continues to the uninterrupted oracle's weights."""
    docs = docs_for("rmsprop", 8)
    first = Trainer(*docs, *data, seed=1, dtype="float64", out_dir=tmp_path / "a", checkpoint_every=None)
    first.run(stop_at=3)
    second = jax_loop(docs, data, out=tmp_path / "a")
    second.resume()
    assert second.step == 3
    second.run()
    assert_same_states(oracle_rmsprop, second)

    back = jax_loop(docs, data, out=tmp_path / "b")
    back.run(stop_at=1)
    oracle = Trainer(*docs, *data, seed=1, dtype="float64", out_dir=tmp_path / "b", checkpoint_every=None)
    oracle.resume()
    oracle.run()
    assert_same_states(oracle_rmsprop, oracle)

    pytest.importorskip("torch")
    from effv2_adapters.torch.train import make_torch_backend

    def torch_loop(out):
        make, _ = make_torch_backend(dtype="float64", device="cpu", precision="float32", channels_last=False,
                                     compile=False)
        return ProgressiveLoop(*docs, *data, make, seed=1, dtype="float64", out_dir=out, checkpoint_every=None)

    t = torch_loop(tmp_path / "c")
    t.run(stop_at=2)
    j = jax_loop(docs, data, out=tmp_path / "c")
    j.resume()
    j.run()
    assert_same_states(oracle_rmsprop, j)
    j = jax_loop(docs, data, out=tmp_path / "d")
    j.run(stop_at=3)
    t = torch_loop(tmp_path / "d")
    t.resume()
    t.run()
    assert_same_states(oracle_rmsprop, t)


def test_bfloat16_runs_close_to_float32(data):
    """bfloat16 compute, float32 weights: finite, near the float32 oracle's weights, but not equal to them."""
    docs = (spec(), parse_obj(dict(check_schedule(2, SIZE), num_stages=1)), parse_obj(check_training("sgd", 16, 8)))
    bf = jax_loop(docs, data, dtype="float32", precision="bfloat16")
    result = bf.run()
    assert all(np.isfinite(h["loss"]) for h in result.stages)
    f32 = Trainer(*docs, *data, seed=1, dtype="float32", checkpoint_every=None)
    f32.run()
    w_bf, w_32 = trainer_states(bf)["model"]["stem.conv.weight"], trainer_states(f32)["model"]["stem.conv.weight"]
    assert 0 < np.abs(w_bf - w_32).max() < 0.1 * np.abs(w_32).max()


@pytest.mark.slow  # each process compiles its own steps (two processes: ~45 s on two cores)
@pytest.mark.parametrize("devices,nproc,group,optimizer", [(2, 1, 4, "sgd"), (1, 2, 16, "rmsprop")])
def test_devices_and_processes_equal_the_oracle(devices, nproc, group, optimizer):
    """2 simulated devices, groups of 4 inside each; 2 jax.distributed processes on 127.0.0.1, one BN
    group of 16 spanning both."""
    report = run_train_check(spec(), framework="jax", devices=devices, nproc=nproc, steps=STEPS, size=SIZE,
                             optimizer=optimizer, group_size=group, timeout_s=300)
    assert report.passed, report.to_json()
    assert (report.processes, report.devices) == (nproc, devices)
    assert all(p.worst <= 1e-9 for p in report.parts) and len(report.parts) == 3


def _cli(args, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "effv2_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _cache_entries() -> set[str]:
    folder = Path(os.environ["EFFV2_JAX_CACHE"])
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_a_new_process_loads_the_compiled_steps_from_the_cache(data, jax_rmsprop, tmp_path):
    """A run in another process (a resumed one, say) with the same steps loads them from the persistent
    cache the in-process run wrote: its train steps are cache hits and it writes no entry of its own (a step
    that missed would be written back). Compile times themselves are too noisy on a shared machine."""
    cold = jax_rmsprop.backend.compile_seconds
    assert set(cold) == {"16px", "24px"} and min(cold.values()) > 0.5, cold
    before = _cache_entries()
    assert before  # the in-process run's steps took over jax_persistent_cache_min_compile_time_secs
    train, held = data
    np.savez(tmp_path / "d.npz", images=np.concatenate([train.images, held.images[:12]]),
             labels=np.concatenate([train.labels, held.labels[:12]]))
    for name, doc in (("spec", json.loads(spec().model_dump_json())), ("s", check_schedule(STEPS, SIZE)),
                      ("t", check_training("rmsprop", 16, 8))):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    env = dict(os.environ)
    done = _cli(["train", tmp_path / "spec.json", "--framework", "jax", "--device", "cpu", "--dtype", "float64",
                 "--training", tmp_path / "t.json", "--schedule", tmp_path / "s.json", "--data", tmp_path / "d.npz",
                 "--out", tmp_path / "o", "--json", "--stop-at", STEPS - 1], env)
    assert done.returncode == 0, done.stderr[-2000:]
    warm = json.loads(done.stdout)
    assert warm["devices"] == 1 and warm["steps"] == STEPS - 1
    assert set(warm["compile_seconds"]) == set(cold)
    assert warm["compile_cache"]["hits"] >= len(cold) and warm["compile_cache"]["misses"] == 0, warm
    assert jax_rmsprop.backend.compile_cache["misses"] >= len(cold)  # the cold run missed, then wrote them
    # the train steps all came from the cache; an eval forward may be new (this run holds out other images)
    steps_written = [name for name in _cache_entries() - before if not name.startswith("jit__eval_logits")]
    assert not steps_written, steps_written
    assert any(not name.startswith("jit__eval_logits") for name in before), sorted(before)


def invoke(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)])


def test_cli_refusals(tmp_path):
    # a device count that does not divide the batch
    env = jax_device_env(3)
    (tmp_path / "t.json").write_text(json.dumps(check_training("sgd", 16, None)))
    done = _cli(["train", "--framework", "jax", "--device", "cpu", "--training", tmp_path / "t.json", "--steps", 1,
                 "--out", tmp_path / "a"], env, timeout=120)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 1 and len(lines) == 1 and "batch of 16" in lines[0] and "3 devices" in lines[0], \
        done.stderr[-2000:]
    # a coordinator that never answers: one line after --timeout, not a hang
    r = invoke("--framework", "jax", "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", 2,
               "--process-id", 1, "--timeout", 2, "--steps", 1, "--out", tmp_path / "b")
    assert r.exit_code == 1 and "no answer from process 0 within 2 s" in r.output and "Traceback" not in r.output
    r = invoke("--framework", "jax", "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", 2,
               "--process-id", 0, "--timeout", 2, "--steps", 1, "--out", tmp_path / "b")
    assert r.exit_code == 1 and "did not join within 2 s" in r.output
    # options of other frameworks
    r = invoke("--framework", "jax", "--compile", "--steps", 1, "--out", tmp_path / "c")
    assert r.exit_code == 2 and "only with --framework torch" in r.output
    r = invoke("--coordinator", "127.0.0.1:1", "--steps", 1, "--out", tmp_path / "c")
    assert r.exit_code == 2 and "only with --framework jax" in r.output
    r = invoke("--framework", "jax", "--precision", "float16", "--steps", 1, "--out", tmp_path / "c")
    assert r.exit_code == 1 and "float32 or bfloat16" in r.output
    # a resume from another spec
    r = invoke("--steps", 2, "--stop-at", 1, "--out", tmp_path / "d", "--training", tmp_path / "t.json")
    assert r.exit_code == 0, r.output
    r = invoke("--num-classes", 12, "--framework", "jax", "--steps", 2, "--resume", "--out", tmp_path / "d",
               "--training", tmp_path / "t.json")
    assert r.exit_code == 1 and "different spec" in r.output and "Traceback" not in r.output


def test_check_train_steps_cli():
    r = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", "torch", "--devices", "2",
                                  "--train-steps", "2"])
    assert r.exit_code == 2 and "for --framework jax" in r.output
    r = CliRunner().invoke(main, ["check", "efficientnetv2-nano", "--framework", "jax", "--devices", "2"])
    assert r.exit_code == 2 and "only with --train-steps" in r.output
