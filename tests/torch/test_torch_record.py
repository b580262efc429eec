"""The PyTorch trainer's record (metrics.jsonl) has the oracle's fields and, in float64, its numbers;
a torch run stopped with --stop-at and resumed continues it without a duplicated or missing step."""

import json

import numpy as np
import pytest

from effv2_spec.documents import parse_obj
from effv2_spec.presets import load as load_preset
from effv2_train.data import load_digits, split
from effv2_reference.train import Trainer
from effv2_train.trainloop import ProgressiveLoop
from effv2_adapters.torch.train import make_torch_backend
from effv2_adapters.train_check import check_schedule, check_training
from record_checks import assert_same_numbers, check_record, expected_log_steps, of_type, read_record

SIZE, STEPS = 24, 6


@pytest.fixture(scope="module")
def data():
    train, held = split(load_digits(SIZE))
    return train.subset(np.arange(48), "digits:48"), held.subset(np.arange(24), "digits:held")


def docs():
    spec = parse_obj(json.loads(load_preset("efficientnetv2-nano").model_dump_json()))
    return spec, parse_obj(check_schedule(STEPS, SIZE)), parse_obj(check_training("rmsprop", 16, 8))


def torch_loop(data, out):
    make, _ = make_torch_backend(dtype="float64", device="cpu", precision="float32", channels_last=False,
                                 compile=False)
    return ProgressiveLoop(*docs(), *data, make, seed=1, dtype="float64", out_dir=out, checkpoint_every=None,
                           log_every=2)


def test_torch_record_equals_the_oracles(data, tmp_path):
    oracle = Trainer(*docs(), *data, seed=1, dtype="float64", out_dir=tmp_path / "oracle", checkpoint_every=None,
                     log_every=2)
    oracle.run()
    torch_loop(data, tmp_path / "torch").run(stop_at=4)
    resumed = torch_loop(data, tmp_path / "torch")
    resumed.resume()
    resumed.run()
    ours, theirs = read_record(tmp_path / "oracle" / "metrics.jsonl"), read_record(tmp_path / "torch" / "metrics.jsonl")
    check_record(ours, oracle, framework="reference")
    check_record(theirs, resumed, framework="torch")
    assert [ln["step"] for ln in of_type(theirs, "step")] == expected_log_steps(STEPS, 2, (3, 6))
    assert [ln["step"] for ln in of_type(theirs, "resume")] == [4]
    assert_same_numbers(ours, [ln for ln in theirs if ln["type"] != "resume"], rtol=1e-9)
