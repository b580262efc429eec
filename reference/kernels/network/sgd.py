"""The SGD-with-momentum update in one Numba pass, of one tensor or of every tensor at once (`optim.SGDOptimizer`).

A small network has ~60 tensors of a few hundred to a few thousand values: NumPy's five
whole-array operations per tensor (L2 term, momentum, Nesterov correction, update) and their
temporaries cost more in call overhead than in arithmetic (~6% of a 16 px step of the nano). Each
value here goes through the same operations, in the same order and precision, as that NumPy
sequence, so the result is bit for bit the same (tested against it). When the tensors are consecutive
pieces of one buffer (the model's parameters, the momentum slots, the summed gradients of several
processes), one call updates them all: a Python loop over 56 tensors cost ~0.35 ms a step, about 1%
of a default training step.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def _update_all(w, g, v, lr, momentum, decay, nesterov):
    for i in range(w.shape[0]):
        e = g[i]
        if decay != 0:
            e = e + decay * w[i]
        vi = v[i] * momentum + e
        v[i] = vi
        if nesterov:
            w[i] = w[i] - lr * (e + momentum * vi)
        else:
            w[i] = w[i] - lr * vi


@njit(["void(float32[::1], float32[::1], float32[::1], float32, float32, float32, boolean)",
       "void(float64[::1], float64[::1], float64[::1], float64, float64, float64, boolean)"], cache=True, nogil=True)
def sgd_momentum_kernel(w, g, v, lr, momentum, decay, nesterov):
    """In place: e = g + decay * w; v = momentum * v + e; w -= lr * (e + momentum * v) (nesterov) or lr * v."""
    _update_all(w, g, v, lr, momentum, decay, nesterov)


@njit(["void(float32[::1], float32[::1], float32[::1], int64[::1], float32[::1], float32, float32, boolean)",
       "void(float64[::1], float64[::1], float64[::1], int64[::1], float64[::1], float64, float64, boolean)"],
      cache=True, nogil=True)
def sgd_momentum_segments_kernel(w, g, v, bounds, decays, lr, momentum, nesterov):
    """`sgd_momentum_kernel` of every tensor at once: tensor s is w[bounds[s]:bounds[s + 1]], decayed by decays[s]."""
    for s in range(bounds.shape[0] - 1):
        lo, hi = bounds[s], bounds[s + 1]
        # each tensor as its own slices: the loop then compiles as the one-tensor kernel's (a loop over the
        # whole buffer with the decay read per tensor ran 5-9x slower: it did not vectorise)
        _update_all(w[lo:hi], g[lo:hi], v[lo:hi], lr, momentum, decays[s], nesterov)


# ---- NumPy twins: the NumPy sequence of the docs, in the dtype (the same bits) --------------------------
def sgd_momentum_naive(w, g, v, lr, momentum, decay, nesterov):
    """The updated (w, v) of `sgd_momentum_kernel`, the arguments left as they are."""
    t = w.dtype.type
    lr, momentum, decay = t(lr), t(momentum), t(decay)
    e = g + decay * w if decay != 0 else g
    v = v * momentum + e
    return (w - lr * (e + momentum * v) if nesterov else w - lr * v), v


def sgd_momentum_segments_naive(w, g, v, bounds, decays, lr, momentum, nesterov):
    """The updated (w, v) of `sgd_momentum_segments_kernel`: `sgd_momentum_naive` per tensor."""
    w, v = w.copy(), v.copy()
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        w[lo:hi], v[lo:hi] = sgd_momentum_naive(w[lo:hi], g[lo:hi], v[lo:hi], lr, momentum, decays[s], nesterov)
    return w, v


# compiled entry point -> its NumPy twin (tests/reference/test_kernel_twins.py holds every module to its table)
TWINS = {"sgd_momentum_kernel": "sgd_momentum_naive", "sgd_momentum_segments_kernel": "sgd_momentum_segments_naive"}
