"""The training plan: keyed draws that do not depend on who computes which rows, groups, shards, schema rules."""

import json
import subprocess
import sys

import numpy as np
import pytest

from effv2_spec.documents import parse_obj
from effv2_spec.errors import SpecError
from effv2_spec.presets import load as load_preset
from effv2_train.data import load_digits, split
from effv2_train.data.pipeline import StepData
from effv2_train.plan import (PURPOSE_AUGMENT, PURPOSE_DROP_PATH, PURPOSE_DROPOUT, PURPOSE_MIX, PlanError,
                                  TrainingPlan, keyed_rng)

SIZE = 16


def nano(dropout=0.2, drop_path=0.3):
    doc = json.loads(load_preset("efficientnetv2-nano").model_dump_json())
    doc["input"]["train_image_size"] = doc["input"]["eval_image_size"] = SIZE
    doc["head"]["dropout"] = dropout
    doc["conventions"]["stochastic_depth"]["rate"] = drop_path
    return parse_obj(doc)


def schedule(steps=12, regs=None):
    return parse_obj({"kind": "progressive_schedule", "name": "tiny", "convention": "paper", "total_steps": steps,
                      "num_stages": 2, "image_size": {"start": 8, "end": SIZE, "multiple": 4},
                      "regularizers": regs or {}})


def recipe(batch=16, **over):
    doc = {"kind": "training", "name": "tiny", "batch_size": batch, "ema": None,
           "optimizer": {"type": "sgd", "momentum": 0.9}}
    doc.update(over)
    return parse_obj(doc)


REGS = {"randaugment_magnitude": {"start": 5, "end": 15}, "mixup_alpha": {"start": 0.2, "end": 0.4},
        "cutmix_alpha": {"start": 0.5, "end": 1.0}, "dropout": {"start": 0.1, "end": 0.3}}


@pytest.fixture(scope="module")
def digits():
    return split(load_digits(SIZE))[0]


def test_keyed_rng_is_a_pure_function_of_its_key():
    a = keyed_rng(3, PURPOSE_AUGMENT, 10, 5).random(4)
    assert np.array_equal(a, keyed_rng(3, PURPOSE_AUGMENT, 10, 5).random(4))
    for other in ((4, PURPOSE_AUGMENT, 10, 5), (3, PURPOSE_AUGMENT + 1, 10, 5), (3, PURPOSE_AUGMENT, 11, 5),
                  (3, PURPOSE_AUGMENT, 10, 6)):
        assert not np.array_equal(a, keyed_rng(*other).random(4))


def test_sample_rngs_are_the_sample_rngs_of_each_row(digits):
    plan = TrainingPlan(nano(), schedule(), recipe(), len(digits), seed=9)
    for purpose in (PURPOSE_AUGMENT, PURPOSE_MIX, PURPOSE_DROP_PATH, PURPOSE_DROPOUT):
        for rows in (range(16), [15, 3, 3], range(0)):
            many = plan.sample_rngs(purpose, 5, rows)
            assert [g.random(3).tobytes() for g in many] == \
                [plan.sample_rng(purpose, 5, r).random(3).tobytes() for r in rows]


def test_batches_cover_each_epoch_once(digits):
    plan = TrainingPlan(nano(), schedule(), recipe(), len(digits), seed=1)
    per_epoch = plan.steps_per_epoch
    seen = np.concatenate([plan.batch_indices(s) for s in range(per_epoch)])
    assert len(seen) == len(set(seen.tolist())) == per_epoch * plan.batch_size
    assert not np.array_equal(plan.batch_indices(0), plan.batch_indices(per_epoch))  # a new order each epoch
    assert np.array_equal(plan.batch_indices(3), TrainingPlan(nano(), schedule(), recipe(), len(digits),
                                                              seed=1).batch_indices(3))


def test_masks_of_any_rows_are_the_rows_of_the_whole_batch(digits):
    plan = TrainingPlan(nano(), schedule(regs=REGS), recipe(), len(digits), seed=2)
    resolved = plan.stage_resolved(plan.stage_at(7))
    full = plan.masks(7, slice(0, 16), resolved)
    assert set(full) >= {"classifier.dropout"} and any(k.endswith(".drop_path") for k in full)
    for rows in (slice(0, 8), slice(8, 16), slice(4, 12), [15, 3]):
        part = plan.masks(7, rows, resolved)
        idx = np.arange(16)[rows] if isinstance(rows, slice) else np.array(rows)
        for name, m in full.items():
            assert np.array_equal(part[name], m[idx]), name
    # the drop rates are those of the stage: a dropout of 0.3 keeps about 70 % over many rows
    many = plan.masks(7, range(2000), resolved)["classifier.dropout"]
    assert abs(many.mean() - (1 - resolved.classifier.dropout)) < 0.01
    # a block's draw does not move when another block's rate changes (each row draws every block)
    low = plan.stage_resolved(plan.stage_at(0))
    a, b = plan.masks(7, range(64), low), plan.masks(7, range(64), resolved)
    name = next(k for k in a if k.endswith(".drop_path"))
    rate_a = next(x.drop_path_rate for x in low.blocks if f"{x.name}.drop_path" == name)
    rate_b = next(x.drop_path_rate for x in resolved.blocks if f"{x.name}.drop_path" == name)
    assert rate_a == rate_b and np.array_equal(a[name], b[name])


@pytest.mark.parametrize("parts", [1, 2, 4])
def test_rows_prepared_in_parts_are_the_whole_batch(digits, parts):
    cfg = recipe(augmentation={"randaugment": "automl", "random_resized_crop": {"area": [0.3, 1.0]},
                               "horizontal_flip": True, "mix_group_size": 4})
    plan = TrainingPlan(nano(), schedule(regs=REGS), cfg, len(digits), seed=5)
    data = StepData(plan, digits)
    step = 9
    resolved = plan.stage_resolved(plan.stage_at(step))
    whole = data.prepare_rows(step, slice(0, 16))
    x_whole, t_whole = data.assemble(step, slice(0, 16), whole, resolved, np.float64)
    shards = plan.shards(parts)
    images = np.concatenate([data.prepare_rows(step, s) for s in shards])
    assert np.array_equal(images, whole)
    xs, ts = zip(*[data.assemble(step, s, whole[s], resolved, np.float64) for s in shards])
    assert np.array_equal(np.concatenate(xs), x_whole) and np.array_equal(np.concatenate(ts), t_whole)
    # mixing happened and kept the targets a distribution
    assert np.allclose(t_whole.sum(axis=1), 1.0) and (t_whole.max(axis=1) < 1.0).any()


def test_shards_refuse_to_cut_a_mix_group(digits):
    plan = TrainingPlan(nano(), schedule(), recipe(augmentation={"mix_group_size": 8}), len(digits))
    assert plan.shards(2) == [slice(0, 8), slice(8, 16)]
    with pytest.raises(PlanError, match="mix_group_size"):
        plan.shards(4)
    with pytest.raises(PlanError, match="cannot be split into 3"):
        plan.shards(3)


def test_mix_group_defaults_to_the_bn_group():
    assert recipe(batch_norm={"group_size": 4}).mix_group_size == 4
    assert recipe(batch_norm={"group_size": 4}, augmentation={"mix_group_size": 8}).mix_group_size == 8
    assert recipe().mix_group_size == 16


@pytest.mark.parametrize("field,doc", [("batch_norm.group_size", {"batch_norm": {"group_size": 5}}),
                                       ("augmentation.mix_group_size", {"augmentation": {"mix_group_size": 6}})])
def test_schema_refuses_groups_that_do_not_divide_the_batch(field, doc):
    with pytest.raises(SpecError) as exc:
        recipe(**doc)
    line = "\n".join(exc.value.lines("t.json"))
    assert f"t.json: {field}: must divide batch_size" in line


def test_a_batch_shrunk_to_the_data_keeps_whole_groups():
    # 20 samples, groups of 8 (BN) and 4 (mix): the batch is 16, the largest multiple of 8 that fits
    plan = TrainingPlan(nano(), schedule(), recipe(batch=32, batch_norm={"group_size": 8},
                                                   augmentation={"mix_group_size": 4}), 20)
    assert (plan.batch_size, plan.bn_group_size, plan.mix_group_size, plan.steps_per_epoch) == (16, 8, 4, 1)
    assert TrainingPlan(nano(), schedule(), recipe(batch=32), 20).batch_size == 20  # no groups stated: all of it
    with pytest.raises(PlanError, match="5 samples cannot fill one batch-norm / mix group of 8"):
        TrainingPlan(nano(), schedule(), recipe(batch=32, batch_norm={"group_size": 8}), 5)


def test_plan_and_pipeline_do_not_import_numba_or_frameworks():
    code = ("import sys, effv2_train.plan, effv2_train.keyed, effv2_train.data.pipeline, "
            "effv2_train.data.loader;"
            "bad = [m for m in ('numba', 'torch', 'jax') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_kernel_gate_answers_none_without_numba_or_without_the_module(monkeypatch):
    import numba  # noqa: F401 - loaded here, so the gate opens
    from effv2_train.kernel_gate import kernel_if_numba_loaded
    from effv2_reference.kernels.data.philox import philox_uniforms

    assert kernel_if_numba_loaded("kernels.data.philox", "philox_uniforms") is philox_uniforms
    assert kernel_if_numba_loaded("kernels.no_such_module", "anything") is None
    monkeypatch.delitem(sys.modules, "numba")
    assert kernel_if_numba_loaded("kernels.data.philox", "philox_uniforms") is None
