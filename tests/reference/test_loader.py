"""`BatchLoader` (data/loader.py): the same rows whatever the number of workers, the prefetch depth and
whether the workers run the Numba kernels or the NumPy ops; workers load Numba even when their parent
(a PyTorch or JAX trainer) never does; the steps asked ahead are bounded by the depth."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from effv2_spec.documents import parse_obj
from effv2_spec.presets import load as load_preset
from effv2_train.data import load_digits, split
from effv2_train.data import pipeline
from effv2_train.data.loader import BatchLoader
from effv2_train.plan import TrainingPlan

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/maps")

# the official train transform (crop of the stored image, flip, automl RandAugment): every kernel runs
AUGMENTATION = {"horizontal_flip": True, "random_resized_crop": {}, "randaugment_reference_size": None}


def step_data(steps=12):
    schedule = json.loads(load_preset("progressive-efficientnetv2-nano-paper").model_dump_json())
    schedule["regularizers"]["randaugment_magnitude"]["end"] = 15
    recipe = json.loads(load_preset("training-cpu").model_dump_json())
    recipe["augmentation"].update(AUGMENTATION)
    data = split(load_digits())[0]
    plan = TrainingPlan(load_preset("efficientnetv2-nano"), parse_obj(schedule), parse_obj(recipe), len(data), seed=0)
    return pipeline.StepData(plan, data)


@pytest.fixture(scope="module")
def data():
    return step_data()


def steps_of(data):
    """A first, a middle and a last step of each stage, and a jump back (as a resumed run asks)."""
    plan = data.plan
    ordered = [s for st in plan.stages for s in (st.start_step, st.start_step + 1, st.end_step - 1)]
    return ordered + [plan.stages[0].start_step + 2]


def numba_mapped(pid: int) -> bool:
    """Whether process `pid` has loaded Numba (its compiled helper is mapped)."""
    return "numba" in Path(f"/proc/{pid}/maps").read_text()


def test_rows_equal_whatever_the_workers_depth_and_kernels(data, monkeypatch):
    steps = steps_of(data)
    rows = slice(4, 20)
    want = {s: data.prepare_rows(s, rows) for s in steps}  # this process: Numba loaded by other tests or not
    for workers, prefetch, kernels in ((2, 0, "numba"), (1, 3, "numba"), (2, 2, "numpy")):
        monkeypatch.setenv("EFFV2_DATA_KERNELS", kernels)
        with BatchLoader(data, workers, rows, prefetch=prefetch) as loader:
            for s in steps:
                got = loader.rows(s)
                assert got.shape == want[s].shape and np.array_equal(got, want[s]), (workers, prefetch, kernels, s)
            assert all(numba_mapped(w.process.pid) == (kernels == "numba") for w in loader._procs)


def test_the_steps_asked_ahead_are_the_depth(data):
    total = data.plan.total_steps
    with BatchLoader(data, 1, slice(0, 8), prefetch=3) as loader:
        (worker,) = loader._procs
        loader.rows(0)
        assert list(worker.pending) == [1, 2, 3]
        loader.rows(1)
        assert list(worker.pending) == [2, 3, 4]
        loader.rows(total - 2)  # a jump: the steps asked before are dropped, none past the last is asked
        assert list(worker.pending) == [total - 1] and loader._asked == {total - 1}
        loader.rows(2)  # and back: step 2's dropped answer is asked again
        assert list(worker.pending) == [3, 4, 5]


def test_the_constructor_keeps_its_positional_form_and_checks_the_depth(data):
    with BatchLoader(data, 0, slice(0, 4)) as loader:
        assert loader.prefetch == 2 and np.array_equal(loader.rows(0), data.prepare_rows(0, slice(0, 4)))
    with pytest.raises(ValueError, match="prefetch: must be >= 0"):
        BatchLoader(data, 1, prefetch=-1)


def test_a_parent_without_numba_has_workers_with_it(tmp_path):
    """A framework trainer's process stays NumPy only; its loader workers take the kernels."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_loader import numba_mapped, step_data
from effv2_train.data.loader import BatchLoader
data = step_data()
with BatchLoader(data, 1, slice(0, 6)) as loader:
    rows = loader.rows(1)
    worker = numba_mapped(loader._procs[0].process.pid)
print('numba' in sys.modules, worker, rows.shape[0])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "6"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_worker_keeps_freed_memory_in_its_heap_without_loading_numba():
    code = ("import sys; from effv2_train.data import loader; loader._init_worker(None, False); "
            "from effv2_reference.kernels.runtime.heap import heap_retained; "
            "print(heap_retained(), 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
