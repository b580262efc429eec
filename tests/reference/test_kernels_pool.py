"""Kernels split over the thread pool give the single-thread results (bit for bit in float64)."""

from __future__ import annotations

import numpy as np
import pytest

from effv2_reference.kernels.runtime import pool
from effv2_reference.kernels.runtime.pool import PIECES_PER_THREAD, chunks, num_threads, parallel_for, set_num_threads
from effv2_reference.model import ReferenceModel
from effv2_reference.ops import softmax_cross_entropy


@pytest.fixture
def restore_threads():
    before = num_threads()
    yield
    set_num_threads(before)


def _step(threads: int, dtype: str):
    set_num_threads(threads)
    m = ReferenceModel("efficientnetv2-nano", dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((16, 3, 64, 64)), rng.integers(0, 10, 16)
    logits = m.forward(x, training=True, bn_group_size=8)
    grads = m.backward(softmax_cross_entropy(logits, labels)[1])
    return logits, grads, m.buffers


def test_chunks_cover_the_range(restore_threads):
    set_num_threads(3)
    for n, work, align in [(1, 10 ** 6, 1), (100, 10 ** 4, 1), (96, 10 ** 5, 16), (1000, 1, 1)]:
        parts = chunks(n, work, align)
        assert parts[0][0] == 0 and parts[-1][1] == n and len(parts) <= 3 * PIECES_PER_THREAD
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert all(lo % align == 0 for lo, _ in parts)


def test_parallel_for_runs_every_piece_once_and_raises(restore_threads):
    set_num_threads(2)
    seen = np.zeros(1 << 20, np.int64)

    def fill(lo, hi):
        seen[lo:hi] += 1

    parallel_for(fill, seen.shape[0])
    assert np.all(seen == 1)

    def fail(lo, hi):
        if lo > 0:
            raise RuntimeError("piece failed")

    with pytest.raises(RuntimeError, match="piece failed"):
        parallel_for(fail, 1 << 20)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_train_step_does_not_depend_on_threads(restore_threads, dtype, monkeypatch):
    one = _step(1, dtype)
    split = []  # the two-thread step must really split work, or this test compares a thing with itself
    real_chunks = pool.chunks
    monkeypatch.setattr(pool, "chunks", lambda *a, **k: split.append(len(parts := real_chunks(*a, **k))) or parts)
    two = _step(2, dtype)
    assert sum(n > 1 for n in split) >= 20, split
    if dtype == "float64":  # every kernel and every BLAS call sees the same rows: identical
        np.testing.assert_array_equal(one[0], two[0])
        for k in one[1]:
            np.testing.assert_array_equal(one[1][k], two[1][k], err_msg=k)
        for k in one[2]:
            np.testing.assert_array_equal(one[2][k], two[2][k], err_msg=k)
    else:  # OpenBLAS sgemm rounds differently for other matrix widths (and for its own thread counts);
        # gradients that are zero in exact arithmetic (BN beta before BN) are float32 noise: an absolute floor
        np.testing.assert_allclose(one[0], two[0], rtol=0, atol=1e-4 * np.abs(one[0]).max())
        for k in one[1]:
            np.testing.assert_allclose(one[1][k], two[1][k], rtol=0, atol=1e-3 * np.abs(one[1][k]).max() + 1e-6,
                                       err_msg=k)
