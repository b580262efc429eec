"""The SGD-with-momentum update of one tensor in one Numba pass (`optim.SGDOptimizer`).

A small network has ~60 tensors of a few hundred to a few thousand values: NumPy's five
whole-array operations per tensor (L2 term, momentum, Nesterov correction, update) and their
temporaries cost more in call overhead than in arithmetic (~6% of a 16 px step of the nano). Each
value here goes through the same operations, in the same order and precision, as that NumPy
sequence, so the result is bit for bit the same (tested against it).
"""

from __future__ import annotations

from numba import njit


@njit(["void(float32[::1], float32[::1], float32[::1], float32, float32, float32, boolean)",
       "void(float64[::1], float64[::1], float64[::1], float64, float64, float64, boolean)"], cache=True, nogil=True)
def sgd_momentum_kernel(w, g, v, lr, momentum, decay, nesterov):
    """In place: e = g + decay * w; v = momentum * v + e; w -= lr * (e + momentum * v) (nesterov) or lr * v."""
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
