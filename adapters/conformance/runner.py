"""`run_check`: one backend against a baseline (the oracle by default), check by check, tensor by tensor.

What is compared (docs/internals.md, Tolerances), with the same canonical weights, input and masks:

* `eval_logits`     eval-mode logits (BN running statistics, no dropout / drop path);
* `train_logits`    train-mode logits, dropout and drop path ON with the same keep masks;
* `gradients`       the gradient of sum(logits * dlogits) for every trainable tensor;
* `running_stats`   every BN running mean / variance after that train-mode step;
* `sgd`, `rmsprop`, `adamw`  (one per optimiser of the schema, recipes.OPTIMIZER_TYPES) trainable tensors
                    after two optimiser steps of that optimiser's base recipe (SGD with Nesterov momentum;
                    RMSProp in the TF conventions with eps 0.1;
                    AdamW with eps 1e-6, no decoupled decay; recipes.BASES), from the same
                    gradients, coupled L2 weight decay 1e-3 on kernels; compared as the update
                    w_after - w_before. These need the optional `optimizer_steps` capability on both sides;
                    without it they are reported "not run: capability missing", never passed.
* one check per recipe field (FIELD_CHECKS, named by the field): the same two steps of a base recipe with
                    that one field changed (recipes.training_configs). `gradient_clip_norm` (a clip norm a
                    quarter of the first step's gradient norm, so that both steps clip),
                    `batch_norm.freeze_affine`, `weight_decay.applies_to`, `weight_decay.rate` on SGD's base;
                    then `<optimiser type>.<field>` for every field of every optimiser model, derived from
                    the schema (a bool flipped, a Literal's other member, a float halved, ...).

The baseline runs in `oracle_dtype` (float64 by default) whatever `dtype` is, so a float32 check
measures the backend's float32 error against the exact answer; weights and inputs are rounded to
`dtype` first, so both sides see identical numbers. Relative error: see numerics.rel_err.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.resolve import ImageSizeError, ResolvedModel, resolve

from .inputs import conformance_tensors, keep_masks, make_input
from .numerics import gradient_scales, rel_err
from .protocol import availability, capabilities, missing_methods
from .recipes import FIELD_CHECKS, OPTIMIZER_TYPES, training_configs
from .report import NOT_RUN, CheckReport, CheckResult, TensorResult

CHECKS = ("eval_logits", "train_logits", "gradients", "running_stats") + OPTIMIZER_TYPES + FIELD_CHECKS
TRAIN_CHECKS = ("train_logits", "gradients", "running_stats")
OPTIMIZER_CHECKS = OPTIMIZER_TYPES + FIELD_CHECKS
TOLERANCES = {
    "float64": {c: 1e-9 for c in CHECKS},
    "float32": {"eval_logits": 1e-4, "train_logits": 1e-4, "gradients": 1e-3, "running_stats": 1e-3,
                **{c: 1e-3 for c in OPTIMIZER_CHECKS}},
}
DEFAULT_IMAGE_SIZE = 64


def default_checks(dtype: str) -> tuple[str, ...]:
    """What a check runs when none are named: everything in float64; in float32 the recipe-field checks
    are left out. They compare semantics (is the clip, the frozen set, the switch applied?), which float64
    settles at 1e-9, while in float32 two clipped steps of a deep network drift past the 1e-3 tolerance on
    its smallest tensors (V2-B1's last SE bias: 1.6e-3, the same check 1e-13 in float64). Named with
    --checks they run in float32 too."""
    return CHECKS if dtype == "float64" else tuple(c for c in CHECKS if c not in FIELD_CHECKS)


class CheckError(Exception):
    """Bad input for a check (unknown framework, framework not installed, size too small, ...)."""


def get_framework(framework: str, option: str = "--framework") -> Any:
    """The adapter a framework name or "module:Class" names, ready to run; CheckError (one line) otherwise.

    A plug-in is code under test: whatever it raises while it is imported, constructed or asked whether
    it is available (SystemExit included) is a CheckError naming the step and the exception."""
    from effv2_spec.lazy import load_target

    from .. import registry

    try:
        target = registry.adapter_target(framework)
    except KeyError as exc:
        raise CheckError(f"{option}: {exc.args[0]}") from None
    try:
        factory = load_target(target)
    except registry.TargetError as exc:
        raise CheckError(f"{option} {framework}: {exc}") from None
    except ImportError as exc:
        advice = (f"install it, e.g. pip install 'effv2[{framework}]'" if framework in registry.ADAPTERS
                  else "is its package installed, or its folder on PYTHONPATH?")
        raise CheckError(f"{option} {framework}: the {framework} adapter cannot be imported ({exc}); "
                         f"{advice}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plug-in's module failing at import
        raise CheckError(f"{option} {framework}: importing the adapter raised {one_line(exc)}") from None
    try:
        adapter = factory() if isinstance(factory, type) else factory  # a class, or a ready instance
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        raise CheckError(f"{option} {framework}: the adapter's constructor raised {one_line(exc)}") from None
    return ready(adapter, framework, option)


def ready(adapter: Any, framework: str, option: str = "--framework") -> Any:
    """`adapter` if it implements the protocol and can run here; CheckError naming what is missing."""
    missing = missing_methods(adapter)
    if missing:
        raise CheckError(f"{option} {framework}: not an effv2 adapter: it lacks {', '.join(missing)} "
                         "(see effv2_adapters.conformance.protocol.Adapter)")
    try:
        reason = availability(adapter)
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        raise CheckError(f"{option} {framework}: its available() raised {one_line(exc)}") from None
    if reason is not None and reason is not True:
        if not isinstance(reason, str) or not reason:
            reason = f"available() returned {reason!r} (expected None, or a reason as text)"
        raise CheckError(f"{option} {framework}: not available: {reason}")
    return adapter


def one_line(exc: BaseException) -> str:
    """'Type: first line of the message' (SystemExit shows its code)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class AdapterRaised(Exception):
    """An adapter method raised (anything but MemoryError or Ctrl-C): the check in progress fails, naming it."""


class _Guarded:
    """`adapter` with every method's exception turned into AdapterRaised naming the adapter and the method."""

    def __init__(self, adapter: Any, who: str):
        self._adapter, self._who = adapter, who

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._adapter, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except (MemoryError, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit(0) must not end a check with exit 0
                raise AdapterRaised(f"{self._who}.{name} raised {one_line(exc)}") from None

        return call


@dataclass
class _Run:
    """One check run's fixed inputs and its growing report."""

    spec: ArchitectureSpec
    resolved: ResolvedModel
    checks: tuple[str, ...]
    dtype: str
    baseline_dtype: str
    seed: int
    report: CheckReport
    say: Callable[[str], None]
    x: np.ndarray = field(default=None, repr=False)
    dlogits: np.ndarray = field(default=None, repr=False)
    masks: dict = field(default_factory=dict, repr=False)
    tensors: dict = field(default_factory=dict, repr=False)

    def record(self, check: str, pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], started: float,
               floors: Mapping[str, float] | None = None) -> None:
        tol = TOLERANCES[self.dtype][check]
        worst_name, worst, n = "", 0.0, 0
        for name, got, want in pairs:
            err, max_ref, scale = rel_err(got, want, (floors or {}).get(name, 0.0))  # inf for NaN/inf/shape
            self.report.tensors.append(TensorResult(check, name, err, max_ref, scale))
            n += 1
            if not worst_name or err > worst:
                worst_name, worst = name, err
        ok = bool(worst <= tol)
        self.report.checks.append(CheckResult(check, tol, n, worst_name, worst, ok,
                                              round(time.perf_counter() - started, 3), "passed" if ok else "failed"))

    def not_run(self, check: str, reason: str) -> None:
        self.report.checks.append(CheckResult(check, TOLERANCES[self.dtype][check], 0, "", None, None, 0.0,
                                              NOT_RUN, reason))


def _validate_request(spec: ArchitectureSpec, dtype: str, checks: Iterable[str], batch: int,
                      image_size: int | tuple[int, int] | None) -> tuple[tuple[str, ...], ResolvedModel]:
    if dtype not in TOLERANCES:
        raise CheckError(f"--dtype: must be one of {', '.join(TOLERANCES)} (got {dtype!r})")
    checks = tuple(checks)
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise CheckError(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    if batch < 1:
        raise CheckError(f"--batch: must be >= 1 (got {batch})")
    if image_size is None:
        image_size = max(DEFAULT_IMAGE_SIZE, spec.total_stride)
    try:
        resolved = resolve(spec, image_size)
    except ImageSizeError as exc:
        raise CheckError(f"--image-size: {exc.rule}") from None
    if batch < 2 and any(c in checks for c in TRAIN_CHECKS + OPTIMIZER_CHECKS):
        h, w = resolved.head.out_size
        if batch * h * w < 2:
            raise CheckError("--batch: train-mode checks need at least 2 values per BN channel; use --batch 2")
    return checks, resolved


def _prepare(run: _Run, batch: int, baseline: Any) -> None:
    """Input, dlogits and keep masks from the seed; calibrated weights rounded to `dtype` (both sides see them)."""
    run.say(f"initialising weights ({run.report.baseline})")
    rng = np.random.default_rng([run.seed, 2])
    run.x = make_input(run.resolved, batch, rng).astype(run.dtype)
    run.dlogits = rng.standard_normal((batch, run.resolved.num_classes)).astype(run.dtype)
    run.masks = keep_masks(run.resolved, batch, np.random.default_rng([run.seed, 4]))
    tensors = conformance_tensors(run.spec, run.resolved, run.seed, run.x.astype(run.baseline_dtype),
                                  run.baseline_dtype, baseline)
    run.tensors = {k: np.asarray(v).astype(run.dtype) for k, v in tensors.items()}


def _model_checks(run: _Run, fw: Any, baseline: Any) -> dict[str, np.ndarray] | None:
    """eval_logits, train_logits, gradients, running_stats; returns the baseline's gradients when an
    optimiser check needs them. Both networks are local: they are freed when this returns."""
    wants_train = any(c in run.checks for c in TRAIN_CHECKS + OPTIMIZER_CHECKS)
    base = baseline.build(run.resolved, run.baseline_dtype, run.tensors)
    run.say(f"building the {run.report.framework} model")
    model = fw.build(run.resolved, run.dtype, run.tensors)
    if "eval_logits" in run.checks:
        t0 = time.perf_counter()
        run.say("eval forward")
        want = baseline.forward(base, run.x.astype(run.baseline_dtype), training=False)
        got = fw.forward(model, run.x, training=False)
        run.record("eval_logits", [("logits", got, want)], t0)
    if not wants_train:
        return None
    t0 = time.perf_counter()
    run.say("train forward + backward")
    masks = {k: v.astype(run.baseline_dtype) for k, v in run.masks.items()}
    want_logits, grads_ref = baseline.forward_backward(base, run.x.astype(run.baseline_dtype),
                                                       run.dlogits.astype(run.baseline_dtype), masks=masks)
    if any(c in run.checks for c in TRAIN_CHECKS):
        masks = {k: v.astype(run.dtype) for k, v in run.masks.items()}
        got_logits, grads = fw.forward_backward(model, run.x, run.dlogits, masks=masks)
        if "train_logits" in run.checks:
            run.record("train_logits", [("logits", got_logits, want_logits)], t0)
        if "gradients" in run.checks:
            t1 = time.perf_counter()
            run.record("gradients", [(p.name, grads.get(p.name, np.full(p.shape, np.nan)), grads_ref[p.name])
                                     for p in run.resolved.trainable()], t1, gradient_scales(grads_ref, run.dtype))
        if "running_stats" in run.checks:
            t1 = time.perf_counter()
            after_ref, after = baseline.export_tensors(base), fw.export_tensors(model)
            run.record("running_stats", [(p.name, after.get(p.name, np.full(p.shape, np.nan)), after_ref[p.name])
                                         for p in run.resolved.buffers()], t1)
    return grads_ref


def _optimizer_checks(run: _Run, fw: Any, baseline: Any, grads_ref: Mapping[str, np.ndarray]) -> None:
    """Two steps of each optimiser recipe on each side from the same gradients; compares the updates."""
    trainable = {p.name: run.tensors[p.name] for p in run.resolved.trainable()}
    grads1 = {k: np.asarray(v, dtype=run.dtype) for k, v in grads_ref.items()}
    noise = np.random.default_rng([run.seed, 3])
    grads2 = {k: (0.5 * g + noise.standard_normal(g.shape) * (np.max(np.abs(g)) + 1e-3)).astype(run.dtype)
              for k, g in grads1.items()}
    lrs = [0.1, 0.05]
    norm1 = float(np.sqrt(sum(np.sum(np.square(grads1[n], dtype=np.float64)) for n in trainable)))
    for name, config in training_configs(clip_norm=max(0.25 * norm1, 1e-12)).items():
        if name not in run.checks:
            continue
        t0 = time.perf_counter()
        run.say(f"{name}: two optimiser steps")
        want = baseline.optimizer_steps(trainable, [grads1, grads2], config, lrs, run.resolved)
        got = fw.optimizer_steps(dict(trainable), [grads1, grads2], config, lrs, run.resolved)
        before = {n: np.asarray(t, np.float64) for n, t in trainable.items()}
        run.record(name, [(n, np.asarray(got[n], np.float64) - before[n], np.asarray(want[n], np.float64) - before[n])
                          for n in trainable], t0)


def _runnable_optimizer_checks(run: _Run, fw: Any, baseline: Any) -> tuple[str, ...]:
    """The optimiser checks both sides can run; the others are reported as not run, with the reason."""
    asked = [c for c in OPTIMIZER_CHECKS if c in run.checks]
    lacking = [who for who, a in ((run.report.framework, fw), (run.report.baseline, baseline))
               if "optimizer" not in capabilities(a)]
    if not lacking:
        return tuple(asked)
    for c in asked:
        run.not_run(c, f"capability missing: optimizer_steps ({' and '.join(lacking)})")
    return ()


def _stopped(run: _Run, reason: str) -> None:
    """The check in progress failed with `reason`; the later ones did not run."""
    done = {c.check for c in run.report.checks}
    pending = [c for c in CHECKS if c in run.checks and c not in done]
    if pending:
        tol = TOLERANCES[run.dtype][pending[0]]
        run.report.checks.append(CheckResult(pending[0], tol, 0, "", None, False, 0.0, "failed", reason))
    for c in pending[1:]:
        run.not_run(c, f"{pending[0]} failed first")


def run_check(spec: ArchitectureSpec, framework: str, *, dtype: str = "float64",
              image_size: int | tuple[int, int] | None = None, batch: int = 2, seed: int = 0,
              checks: Iterable[str] = CHECKS, oracle_dtype: str = "float64", adapter: Any = None,
              baseline: Any = "reference", progress: Callable[[str], None] | None = None) -> CheckReport:
    """Compare `framework` (a name or "module:Class"; `adapter` overrides the lookup) against `baseline`
    (a name or an adapter; the oracle by default) on `spec`; see the module docstring."""
    checks, resolved = _validate_request(spec, dtype, checks, batch, image_size)
    size = resolved.image_size
    fw = ready(adapter, framework) if adapter is not None else get_framework(framework)
    if isinstance(baseline, str):
        baseline_name, base = baseline, get_framework(baseline, "--against")
    else:
        baseline_name = getattr(baseline, "name", type(baseline).__name__)
        base = ready(baseline, "baseline", "--against")
    report = CheckReport(spec.name, framework, dtype, oracle_dtype, size, batch, seed, baseline=baseline_name)
    run = _Run(spec, resolved, checks, dtype, oracle_dtype, seed, report, progress or (lambda msg: None))
    optimizer_checks = _runnable_optimizer_checks(run, fw, base)
    run.checks = tuple(c for c in checks if c not in OPTIMIZER_CHECKS or c in optimizer_checks)
    if not run.checks:  # everything asked for needs a missing capability: nothing to compute
        return report
    fw, base = _Guarded(fw, framework), _Guarded(base, baseline_name)
    try:
        _prepare(run, batch, base)
        grads_ref = _model_checks(run, fw, base)
        if grads_ref is not None and optimizer_checks:
            _optimizer_checks(run, fw, base, grads_ref)
    except AdapterRaised as exc:
        _stopped(run, str(exc))
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # an adapter's result is unusable
        _stopped(run, f"its results could not be used ({one_line(exc)})")
    order = {c: i for i, c in enumerate(CHECKS)}
    report.checks.sort(key=lambda c: order[c.check])
    return report


__all__ = ["CHECKS", "FIELD_CHECKS", "default_checks", "TOLERANCES", "DEFAULT_IMAGE_SIZE", "CheckError",
           "AdapterRaised", "get_framework", "ready", "run_check", "one_line"]
