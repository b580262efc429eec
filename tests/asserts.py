"""One way for the tests to say "these tensors agree": a relative error on the reference's scale, and a
failure message that names the tensor, the worst entry and both values."""

from __future__ import annotations

import numpy as np


def rel_err(got, want) -> float:
    """max|got - want| / max|want| (the absolute error when want is all zero); inf on a shape mismatch."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    return diff / scale if scale > 0 else diff


def assert_close(label: str, got, want, rtol: float) -> None:
    __tracebackhide__ = True
    got_a, want_a = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got_a.shape != want_a.shape:
        raise AssertionError(f"{label}: shape {got_a.shape} != expected {want_a.shape}")
    err = rel_err(got_a, want_a)
    if not err <= rtol:
        i = np.unravel_index(int(np.argmax(np.abs(got_a - want_a))), got_a.shape) if got_a.size else ()
        raise AssertionError(f"{label}: relative error {err:.3e} > {rtol:.0e}; worst at {tuple(int(j) for j in i)}: "
                             f"{got_a[i]!r} vs expected {want_a[i]!r}")


def trainer_states(run) -> dict:
    """{'model', 'optimizer', 'ema'} tensors of a training loop (its backend's state) or of a loaded checkpoint."""
    if hasattr(run, "backend"):
        model, optimizer, ema = run.backend.state()
    else:
        model, optimizer, ema = run.model, run.optimizer, run.ema
    return {"model": model, "optimizer": optimizer, "ema": ema}


def assert_same_states(ref, got, tol: float = 1e-9, dtype: str = "float64"):
    """Two runs (loops or checkpoints) end in the same state: every tensor within `tol`, nothing missing or extra,
    the same step counts (effv2_adapters.train_check.compare_states, what `effv2 check --train-steps` uses).
    Returns the per-part reports."""
    __tracebackhide__ = True
    from effv2_adapters.train_check import compare_states

    parts, problems = compare_states(trainer_states(ref), trainer_states(got), dtype)
    assert not problems, problems
    for p in parts:
        assert p.worst <= tol, (p.part, p.worst_name, p.worst)
    return parts
