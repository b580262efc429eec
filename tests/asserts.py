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
