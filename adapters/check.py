"""Conformance harness: a framework model against the NumPy oracle, tensor by tensor.

Framework-agnostic: the framework side goes only through the adapter protocol
(`effv2_adapters.registry`), so the same harness checks torch, jax or any later backend.

What is compared (DESIGN.md, Conformance), with the same canonical weights and input:

* `eval_logits`     eval-mode logits (BN running statistics, no dropout / drop path);
* `train_logits`    train-mode logits, dropout and drop path ON with the oracle's masks;
* `gradients`       the gradient of sum(logits * dlogits) for every trainable tensor;
* `running_stats`   every BN running mean / variance after that train-mode step;
* `sgd`, `rmsprop`  trainable tensors after two optimiser steps (SGD with Nesterov momentum;
                    RMSProp in the TF convention: eps inside the sqrt, accumulator 1, lr in the
                    momentum), from the same gradients, coupled L2 weight decay on kernels.
                    Compared as the update w_after - w_before, so small steps are not hidden
                    by the weights' own magnitude.

Weights: the oracle's seeded initialisation with BN gamma/beta and biases perturbed, and BN
running statistics a few percent away from the check input's batch statistics, with gamma/beta
compensated so eval mode is non-trivial yet well conditioned (see `conformance_tensors`).

The oracle runs in float64 by default whatever `dtype` is: a float32 check then measures
the framework's float32 error against the exact answer. Weights and inputs are rounded to
`dtype` first, so both sides see identical numbers.

Relative error of a tensor: max|a - b| / max|b| (b = oracle); an all-zero oracle tensor
falls back to the absolute error. One exception, for gradients only: a gradient that is
mathematically zero (see `gradient_scales`) is rounding noise on both sides and is measured
on the scale of its unit's gradients; the report gives the scale used for every tensor. Tolerances: float64 1e-9 everywhere; float32 1e-4 on
logits, 1e-3 on gradients, running statistics and optimiser updates.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.resolve import ConvBN, ResolvedModel, resolve

CHECKS = ("eval_logits", "train_logits", "gradients", "running_stats", "sgd", "rmsprop")
TOLERANCES = {
    "float64": {c: 1e-9 for c in CHECKS},
    "float32": {"eval_logits": 1e-4, "train_logits": 1e-4, "gradients": 1e-3, "running_stats": 1e-3,
                "sgd": 1e-3, "rmsprop": 1e-3},
}
DEFAULT_IMAGE_SIZE = 64
#: BN gamma/beta of each residual branch's last BN are scaled by this before calibration (see conformance_tensors)
RESIDUAL_GAMMA = 0.2


class CheckError(Exception):
    """Bad input for a check (unknown framework, framework not installed, size too small, ...)."""


@dataclass
class TensorResult:
    check: str
    name: str
    rel_err: float
    max_ref: float
    scale: float
    """The denominator used: max_ref, or the unit's gradient scale when the oracle's gradient is
    numerically zero (see `gradient_scales`)."""


@dataclass
class CheckResult:
    check: str
    tolerance: float
    tensors: int
    worst_tensor: str
    worst_rel_err: float
    passed: bool
    seconds: float


@dataclass
class CheckReport:
    spec: str
    framework: str
    dtype: str
    oracle_dtype: str
    image_size: tuple[int, int]
    batch: int
    seed: int
    checks: list[CheckResult] = field(default_factory=list)
    tensors: list[TensorResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self, per_tensor: bool = True) -> dict:
        out = {
            "spec": self.spec, "framework": self.framework, "dtype": self.dtype, "oracle_dtype": self.oracle_dtype,
            "image_size": list(self.image_size), "batch": self.batch, "seed": self.seed, "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
        }
        if per_tensor:
            out["tensors"] = [asdict(t) for t in self.tensors]
        return out


# ---- numerics -------------------------------------------------------------------------------------
def rel_err(a: np.ndarray, b: np.ndarray, floor: float = 0.0) -> tuple[float, float, float]:
    """(max|a - b| / scale, max|b|, scale) with scale = max(max|b|, floor); the absolute error when
    the scale is 0. NaN/inf and shape mismatches give an infinite error."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0 and b.size == 0:
        return 0.0, 0.0, 0.0
    max_ref = float(np.max(np.abs(b))) if b.size else 0.0
    if a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf"), max_ref, max_ref
    scale = max(max_ref, floor)
    diff = float(np.max(np.abs(a - b)))
    return (diff / scale if scale > 0 else diff), max_ref, scale


def unit_of(name: str) -> str:
    """The unit a canonical tensor belongs to: 'blocks.3.project.bn.bias' -> 'blocks.3.project'."""
    parts = name.split(".")
    return ".".join(parts[:-2]) if len(parts) > 2 else parts[0]


def gradient_scales(grads: Mapping[str, np.ndarray], dtype: str) -> dict[str, float]:
    """Per tensor, the scale its gradient error is measured on.

    A tensor's own max|g|, except where the oracle's gradient is numerically zero
    (max|g| <= sqrt(eps) * the largest gradient of its unit): a BN beta whose output reaches
    the next training-mode BN only through linear layers (every projection BN beta of a block
    without drop-path variation) has a mathematically zero gradient, so both sides hold rounding
    noise; that noise is measured on the unit's gradient scale instead of on itself.
    """
    unit_max: dict[str, float] = {}
    for name, g in grads.items():
        m = float(np.max(np.abs(g))) if np.size(g) else 0.0
        unit_max[unit_of(name)] = max(unit_max.get(unit_of(name), 0.0), m)
    threshold = float(np.sqrt(np.finfo(np.dtype(dtype)).eps))
    floors = {}
    for name, g in grads.items():
        m = float(np.max(np.abs(g))) if np.size(g) else 0.0
        u = unit_max[unit_of(name)]
        floors[name] = u if m <= threshold * u else 0.0
    return floors


# ---- the oracle -----------------------------------------------------------------------------------
class Oracle:
    """Thin wrapper over `effv2_reference.model.ReferenceModel` and `effv2_reference.optim`."""

    def __init__(self, spec: ArchitectureSpec, resolved: ResolvedModel, dtype: str, seed: int):
        try:
            from effv2_reference.model import ReferenceModel
        except ImportError as exc:
            raise CheckError(f"the reference oracle is not available ({exc}); pip install 'effv2[reference]'") from None
        self.resolved = resolved
        self.dtype = np.dtype(dtype)
        self.model = ReferenceModel(spec, dtype=self.dtype, seed=seed)

    def state(self) -> dict[str, np.ndarray]:
        return {k: np.array(v, copy=True) for k, v in self.model.state_dict().items()}

    def load(self, tensors: Mapping[str, np.ndarray]) -> None:
        self.model.load_state_dict({k: np.asarray(v, dtype=self.dtype) for k, v in tensors.items()})

    def forward(self, x, training: bool, masks=None) -> np.ndarray:
        return np.asarray(self.model.forward(np.asarray(x, dtype=self.dtype), training=training, masks=masks))

    def last_masks(self) -> dict[str, np.ndarray]:
        return {k: np.array(v, copy=True) for k, v in (self.model.last_masks or {}).items()}

    def backward(self, dlogits) -> dict[str, np.ndarray]:
        grads = self.model.backward(np.asarray(dlogits, dtype=self.dtype))
        return {k: np.array(v, copy=True) for k, v in grads.items()}

    def release(self) -> None:
        """Drop the network: what follows (optimizer_steps) needs only tensors and gradients."""
        self.model = None

    def optimizer_steps(self, tensors, grads_per_step, config, lrs) -> dict[str, np.ndarray]:
        from effv2_reference.optim import build_optimizer

        opt = build_optimizer(config, self.resolved)
        params = {p.name: np.array(tensors[p.name], dtype=self.dtype, copy=True) for p in self.resolved.trainable()}
        for grads, lr in zip(grads_per_step, lrs):
            opt.step(params, {k: np.asarray(grads[k], dtype=self.dtype) for k in params}, lr)  # in place
        return params


# ---- inputs -----------------------------------------------------------------------------------------
def _with(spec: ArchitectureSpec, **changes) -> ArchitectureSpec:
    from effv2_spec.documents import parse_obj

    data = spec.model_dump(mode="json")
    for path, value in changes.items():
        cur = data
        keys = path.split("__")
        for k in keys[:-1]:
            cur = cur[k]
        cur[keys[-1]] = value
    return parse_obj(data, ArchitectureSpec)


def make_input(spec: ArchitectureSpec, batch: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((batch, spec.input.channels, *size))
    if spec.input.normalization.in_model:  # raw pixels: the model normalises
        norm = spec.input.normalization
        x = x * np.asarray(norm.std)[None, :, None, None] + np.asarray(norm.mean)[None, :, None, None]
    return x


def conformance_tensors(spec: ArchitectureSpec, resolved: ResolvedModel, seed: int, x: np.ndarray,
                        oracle_dtype: str = "float64", oracle_factory=None) -> dict[str, np.ndarray]:
    """Seeded oracle init with every BN given non-trivial affine and running statistics.

    1. The oracle's seeded initialisation; BN gamma x U(0.7, 1.3), BN beta, SE and dense biases
       + N(0, 0.1); the last BN of every residual branch scaled by RESIDUAL_GAMMA (0.2), as
       "zero-gamma" residual initialisations do. Without it a deep random network is chaotic:
       float32 rounding alone moves V2-M's eval logits by 2e-2 (5e-5 with it), so no float32
       implementation could meet the 1e-4 tolerance and the check would measure conditioning,
       not conformance. Each branch still contributes ~20 % of the stream.
    2. Calibration: one training-mode oracle pass over the check input `x` (BN momentum 1, biased
       running variance, no dropout / drop path) records every BN's batch mean mu and variance s2.
    3. Running statistics are set away from them, mean mu + 0.1 s N(0, 1) and variance s2 x U(0.8, 1.25),
       and gamma / beta are compensated so that each BN's eval output on `x` equals its train output
       in step 2: gamma' = gamma sqrt((var + eps) / (s2 + eps)), beta' = beta + gamma (mean - mu) / sqrt(s2 + eps).

    Eval mode therefore uses running statistics that differ from the batch statistics by a few
    percent everywhere (an implementation that normalises with batch statistics in eval mode, or
    misplaces eps, fails), yet follows the well-conditioned train-mode trajectory. Random running
    statistics, or a calibration that is merely perturbed, make a deep random network's eval
    activations grow by orders of magnitude (every mismatch is amplified block after block), and
    a float32 comparison then measures only cancellation.
    """
    rng = np.random.default_rng([seed, 1])
    calib_spec = _with(spec, conventions__batch_norm__momentum=1.0, conventions__batch_norm__running_var="biased",
                       conventions__stochastic_depth__rate=0.0, head__dropout=0.0)
    calib = (oracle_factory or Oracle)(calib_spec, resolve(calib_spec, resolved.image_size), oracle_dtype, seed)
    tensors = calib.state()
    for p in resolved.params:
        t = tensors[p.name]
        if p.role == "bn_gamma":
            tensors[p.name] = t * rng.uniform(0.7, 1.3, t.shape)
        elif p.role in ("bn_beta", "se_bias", "dense_bias"):
            tensors[p.name] = t + rng.normal(0.0, 0.1, t.shape)
    for block in resolved.blocks:  # damped residual branches: a deep random network stays well conditioned
        if block.residual:
            last = [u for u in block.layers if isinstance(u, ConvBN)][-1]
            tensors[f"{last.name}.bn.weight"] = tensors[f"{last.name}.bn.weight"] * RESIDUAL_GAMMA
            tensors[f"{last.name}.bn.bias"] = tensors[f"{last.name}.bn.bias"] * RESIDUAL_GAMMA
    calib.load(tensors)
    calib.forward(x, training=True)  # momentum 1: running statistics = this batch's statistics
    stats = calib.state()
    eps = resolved.bn_eps
    for p in resolved.params:
        if p.role != "bn_running_mean":
            continue
        bn = p.name[: -len("running_mean")]
        mu, s2 = stats[bn + "running_mean"], stats[bn + "running_var"]
        mean = mu + rng.normal(0.0, 0.1, mu.shape) * np.sqrt(s2)
        var = s2 * rng.uniform(0.8, 1.25, s2.shape)
        gamma, beta = tensors[bn + "weight"], tensors[bn + "bias"]
        tensors[bn + "running_mean"], tensors[bn + "running_var"] = mean, var
        tensors[bn + "weight"] = gamma * np.sqrt((var + eps) / (s2 + eps))
        tensors[bn + "bias"] = beta + gamma * (mean - mu) / np.sqrt(s2 + eps)
    return tensors


def training_configs():
    from effv2_spec.training import SGD, RMSProp, TrainingConfig, WeightDecay

    wd = WeightDecay(rate=1e-3)
    return {
        "sgd": TrainingConfig(optimizer=SGD(type="sgd", momentum=0.9, nesterov=True), weight_decay=wd),
        "rmsprop": TrainingConfig(optimizer=RMSProp(type="rmsprop"), weight_decay=wd),  # TF convention (defaults)
    }


# ---- the check -------------------------------------------------------------------------------------
def get_framework(framework: str):
    from . import registry

    try:
        adapter = registry.get_adapter(framework)
    except KeyError as exc:
        raise CheckError(str(exc.args[0])) from None
    except ImportError as exc:
        raise CheckError(f"framework {framework!r} is not installed or its adapter is missing ({exc})") from None
    reason = adapter.available()
    if reason:
        raise CheckError(f"framework {framework!r} is not available: {reason}")
    return adapter


def run_check(spec: ArchitectureSpec, framework: str, *, dtype: str = "float64", image_size: int | tuple[int, int] | None = None,
              batch: int = 2, seed: int = 0, checks: Iterable[str] = CHECKS, oracle_dtype: str = "float64",
              adapter: Any = None, progress=None, oracle_factory=None) -> CheckReport:
    """Compare `framework` against the oracle on `spec`; see the module docstring.

    `adapter` overrides the registry lookup of `framework`; `oracle_factory(spec, resolved, dtype, seed)`
    overrides the reference oracle (anything with Oracle's methods: state, load, forward, last_masks,
    backward, release, optimizer_steps), e.g. to compare two backends.
    """
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
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(size) < spec.total_stride:
        raise CheckError(f"--image-size: must be >= the network's total stride {spec.total_stride} (got {size[0]})")
    if batch < 2 and any(c in checks for c in ("train_logits", "gradients", "running_stats", "sgd", "rmsprop")):
        n_last = batch * resolve(spec, size).head.out_size[0] * resolve(spec, size).head.out_size[1]
        if n_last < 2:
            raise CheckError("--batch: train-mode checks need at least 2 values per BN channel; use --batch 2")
    fw = adapter if adapter is not None else get_framework(framework)
    say = progress or (lambda msg: None)
    resolved = resolve(spec, size)
    tol = TOLERANCES[dtype]
    report = CheckReport(spec.name, framework, dtype, oracle_dtype, size, batch, seed)

    say("initialising weights (oracle)")
    make_oracle = oracle_factory or Oracle
    rng = np.random.default_rng([seed, 2])
    x = make_input(spec, batch, size, rng).astype(dtype)
    dlogits = rng.standard_normal((batch, spec.num_classes)).astype(dtype)
    tensors = conformance_tensors(spec, resolved, seed, x.astype(oracle_dtype), oracle_dtype, make_oracle)
    tensors = {k: np.asarray(v).astype(dtype) for k, v in tensors.items()}  # both sides see the rounded weights

    oracle = make_oracle(spec, resolved, oracle_dtype, seed)
    oracle.load(tensors)
    say(f"building the {framework} model")
    model = fw.build(resolved, dtype, tensors)

    def record(check: str, pairs: list[tuple[str, np.ndarray, np.ndarray]], started: float,
               floors: Mapping[str, float] | None = None) -> None:
        worst_name, worst = "", 0.0
        for name, a, b in pairs:
            err, max_ref, scale = rel_err(a, b, (floors or {}).get(name, 0.0))  # inf for NaN/inf/shape, never NaN
            report.tensors.append(TensorResult(check, name, err, max_ref, scale))
            if not worst_name or err > worst:
                worst_name, worst = name, err
        report.checks.append(CheckResult(check, tol[check], len(pairs), worst_name, worst,
                                         bool(worst <= tol[check]), round(time.perf_counter() - started, 3)))

    if "eval_logits" in checks:
        t0 = time.perf_counter()
        say("eval forward")
        ref = oracle.forward(x, training=False)
        got = fw.forward(model, x, training=False)
        record("eval_logits", [("logits", got, ref)], t0)

    train_checks = [c for c in ("train_logits", "gradients", "running_stats") if c in checks]
    grads_ref = None
    if train_checks or "sgd" in checks or "rmsprop" in checks:
        t0 = time.perf_counter()
        say("train forward + backward")
        ref_logits = oracle.forward(x, training=True)
        masks = oracle.last_masks()
        grads_ref = oracle.backward(dlogits)
        if train_checks:
            got_logits, grads = fw.forward_backward(model, x, dlogits, masks=masks)
            if "train_logits" in checks:
                record("train_logits", [("logits", got_logits, ref_logits)], t0)
            if "gradients" in checks:
                t1 = time.perf_counter()
                record("gradients", [(p.name, grads.get(p.name, np.full(p.shape, np.nan)), grads_ref[p.name])
                                     for p in resolved.trainable()], t1, gradient_scales(grads_ref, dtype))
            if "running_stats" in checks:
                t1 = time.perf_counter()
                after_ref, after = oracle.state(), fw.export_tensors(model)
                record("running_stats", [(p.name, after.get(p.name, np.full(p.shape, np.nan)), after_ref[p.name])
                                         for p in resolved.buffers()], t1)

    if grads_ref is not None:
        # the optimiser checks need only tensors and gradients: free both models first (XL in
        # float64 holds 1.7 GB per copy of its parameters; keeping them would double the peak)
        del model
        oracle.release()
        trainable = {p.name: tensors[p.name] for p in resolved.trainable()}
        grads1 = {k: np.asarray(v, dtype=dtype) for k, v in grads_ref.items()}
        del grads_ref
        noise = np.random.default_rng([seed, 3])
        grads2 = {k: (0.5 * g + noise.standard_normal(g.shape) * (np.max(np.abs(g)) + 1e-3)).astype(dtype)
                  for k, g in grads1.items()}
        lrs = [0.1, 0.05]
        for name, config in training_configs().items():
            if name not in checks:
                continue
            t0 = time.perf_counter()
            say(f"{name}: two optimiser steps")
            ref_after = oracle.optimizer_steps(trainable, [grads1, grads2], config, lrs)
            got_after = fw.optimizer_steps(dict(trainable), [grads1, grads2], config, lrs, resolved)
            record(name, [(n, np.asarray(got_after[n], np.float64) - np.asarray(trainable[n], np.float64),
                           np.asarray(ref_after[n], np.float64) - np.asarray(trainable[n], np.float64))
                          for n in trainable], t0)
    return report


def format_report(report: CheckReport, per_tensor: bool = False) -> tuple[list[str], list[list]]:
    """(columns, rows) of the human-readable table."""
    columns = ["check", "tensors", "worst tensor", "rel err", "tolerance", "result", "s"]
    rows = [[c.check, c.tensors, c.worst_tensor, f"{c.worst_rel_err:.2e}", f"{c.tolerance:.0e}",
             "ok" if c.passed else "FAIL", f"{c.seconds:.1f}"] for c in report.checks]
    if per_tensor:
        tol = {c.check: c.tolerance for c in report.checks}
        rows = [[t.check, 1, t.name, f"{t.rel_err:.2e}", f"{tol[t.check]:.0e}",
                 "ok" if t.rel_err <= tol[t.check] else "FAIL", ""] for t in report.tensors]
    return columns, rows


__all__ = ["CHECKS", "TOLERANCES", "CheckError", "CheckReport", "CheckResult", "TensorResult", "run_check",
           "rel_err", "gradient_scales", "conformance_tensors", "format_report"]
