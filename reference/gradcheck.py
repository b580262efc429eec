"""One gradient-check helper: central differences of a random projection, in float64.

For a function `f(inputs) -> out` the scalar checked is `L = sum(out * R)` with a fixed
random `R`, so every output element (and every term of every backward formula) weighs
in. `analytic(inputs, R)` must return dL/d(input) for the inputs it differentiates. Each
tensor's error is `max|analytic - numeric| / max(max|numeric|, floor)` over the checked
entries; with float64 and eps = 1e-5 a correct backward lands near 1e-8 (roundoff of L over 2 eps), while a single
dropped or wrong term typically shows up at 1e-3 or worse.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree."""


def _central_differences(name: str, x: np.ndarray, grad, loss: Callable[[], float], eps: float,
                         max_entries: int | None, rng: np.random.Generator, label: str):
    """(name, shape, entries, analytic, numeric) of one tensor: its chosen entries perturbed in place by +-eps."""
    grad = np.asarray(grad, dtype=np.float64)
    if grad.shape != x.shape:
        raise GradcheckError(f"{label}{name}: analytic gradient shape {grad.shape} != input shape {x.shape}")
    flat = x.reshape(-1)  # a view: perturbing it perturbs the caller's array
    idx = np.arange(flat.size)
    if max_entries is not None and flat.size > max_entries:
        idx = np.sort(rng.choice(flat.size, max_entries, replace=False))
    numeric = np.empty(idx.size)
    for k, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        up = loss()
        flat[i] = old - eps
        down = loss()
        flat[i] = old
        numeric[k] = (up - down) / (2 * eps)
    return name, x.shape, idx, grad.reshape(-1)[idx], numeric


def gradcheck(f: Callable[[dict], np.ndarray], inputs: Mapping[str, np.ndarray],
              analytic: Callable[[dict, np.ndarray], Mapping[str, np.ndarray]], *, eps: float = 1e-5,
              rtol: float = 1e-6, max_entries: int | None = None, floor: float = 1e-3, seed: int = 0,
              label: str = "") -> dict[str, float]:
    """Check `analytic` against central differences; returns {name: relative error}.

    inputs: float64 arrays, perturbed in place (and restored), so they may be the very
    arrays a model holds. max_entries: check at most this many randomly chosen entries per
    tensor (all when None). floor: a tensor's error is relative to at least `floor` times the
    largest numeric gradient over all tensors (central differences have an absolute noise
    floor of ~1e-16 * |L| / eps). Raises GradcheckError naming the worst tensor and entry.
    """
    __tracebackhide__ = True
    inputs = dict(inputs)
    for name, a in inputs.items():
        if a.dtype != np.float64:
            raise TypeError(f"gradcheck: {name} must be float64 (got {a.dtype}); float32 differences are noise")
    rng = np.random.default_rng(seed)
    out = np.asarray(f(inputs), dtype=np.float64)
    proj = rng.standard_normal(out.shape)
    grads = analytic(inputs, proj)

    def loss() -> float:
        return float(np.sum(np.asarray(f(inputs), dtype=np.float64) * proj))

    results = [_central_differences(name, inputs[name], grad, loss, eps, max_entries, rng, label)
               for name, grad in grads.items()]
    # a tensor whose true gradient is ~0 (e.g. a BN shift that the next train-mode BN cancels)
    # is judged against `floor` times the largest gradient anywhere, not against its own noise
    top = max((np.abs(r[4]).max(initial=0.0) for r in results), default=0.0)
    errors: dict[str, float] = {}
    failures = []
    for name, shape, idx, ana, numeric in results:
        diff = np.abs(ana - numeric)
        scale = max(np.abs(numeric).max(initial=0.0), np.abs(ana).max(initial=0.0), floor * top, 1e-300)
        errors[name] = float(diff.max(initial=0.0) / scale)
        if errors[name] > rtol:
            worst = int(np.argmax(diff))
            entry = np.unravel_index(idx[worst], shape)
            failures.append(f"{label}{name} grad: max rel err {errors[name]:.2e} > {rtol:.0e} at "
                            f"{tuple(map(int, entry))}"
                            f" (analytic {ana[worst]:.10g} vs numeric {numeric[worst]:.10g})")
    if failures:
        raise GradcheckError("; ".join(failures))
    return errors


def model_gradcheck(model, x: np.ndarray, *, masks: Mapping[str, np.ndarray] | None = None,
                    max_entries: int | None = 6, rtol: float = 1e-6, eps: float = 1e-5, seed: int = 0,
                    check_input: bool = True, training: bool = True, bn_group_size: int | None = None,
                    frozen_bn: bool = False) -> dict[str, float]:
    """`gradcheck` of a float64 ReferenceModel, every trainable tensor (and the input).

    Training mode by default (training=False: eval-mode gradients); `bn_group_size` and
    `frozen_bn` are passed to every forward. Masks default to the ones the first forward
    draws, then stay fixed, so dropout and drop path are differentiated as the fixed linear
    maps they are for one step.
    """
    __tracebackhide__ = True
    if model.dtype != np.float64:
        raise TypeError("model_gradcheck: the model must be float64")
    bn = {"bn_group_size": bn_group_size, "frozen_bn": frozen_bn}
    model.forward(x, training=training, masks=masks, **bn)
    fixed = dict(model.last_masks)
    inputs = dict(model.params)
    if check_input:
        inputs["input"] = np.array(x, dtype=np.float64)

    def f(arrs):
        return model.forward(arrs.get("input", x), training=training, masks=fixed, **bn)

    def analytic(arrs, proj):
        model.forward(arrs.get("input", x), training=training, masks=fixed, **bn)
        grads, dx = model.backward(proj, return_input_grad=True)
        if check_input:
            grads["input"] = dx
        return grads

    return gradcheck(f, inputs, analytic, eps=eps, rtol=rtol, max_entries=max_entries, seed=seed,
                     label=f"{model.resolved.spec.name}: ")
