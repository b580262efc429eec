"""JAX training backend: the shared progressive loop (effv2_train.trainloop) on a Flax NNX model.

Everything that is not framework code (the plan, the data pipeline and its worker processes, the
masks, the stage table, checkpoints, resume) comes from the loop; this module holds the model,
one jit-compiled optimisation step, the eval forward, the collectives and the conversion of the
optax state to the canonical optimiser slots (SGD `momentum/<name>`, RMSProp `ms/<name>`,
`mom/<name>`, plus `steps`), so checkpoints move between the oracle, PyTorch and JAX.

Data parallel (SPMD): one `Mesh` with a 'data' axis (AxisType.Auto; the explicit default rejects
this network) over every device of every process; the global batch is sharded along it
(`P('data')`), parameters, BN statistics, optimiser state and EMA are replicated. Each process
holds only its rows (`plan.shards(processes)[rank]`), cut over its local devices by
`jax.make_array_from_process_local_data`; the loss is the mean over the global batch, so the
gradient is the global batch's whatever the layout. BN statistics groups follow the plan: the
batch is reshaped to (groups, G, ...) inside the step (`modules.BatchNorm.groups`); XLA keeps a
group that lies on one device local and reduces one that spans devices. Running statistics follow
the oracle's rule (per-group conversion, mean over groups, one momentum update); they are
replicated outputs of the step, so every device holds the same values.

One compiled step per stage (image size and the stage's dropout / drop-path rates are static);
compile seconds are recorded per stage in `JaxBackend.compile_seconds`, and the persistent
compilation cache (`enable_compilation_cache`) lets a resumed run load them instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from effv2_spec.resolve import ResolvedModel
from effv2_train.plan import PlanError, TrainingPlan
from effv2_train.recipe import SLOTS, Recipe, soft_targets, stage_rates

from .runtime import (DEFAULT_CACHE, Processes, TrainSetupError, compile_clock,  # noqa: F401 (re-exported)
                      enable_compilation_cache)
from .state import _Layout, _split, _stats_of

PRECISIONS = ("float32", "bfloat16")


# ---- the compiled step -------------------------------------------------------------------------
# The optimiser and the EMA are elementwise, so they run on the tensors of each group concatenated
# into one vector (trainable tensors: "decayed" (L2) and "other"; the EMA: every model tensor): the
# same numbers as per tensor, and XLA compiles a few fused kernels instead of one per tensor per
# operation (on CPU that halves the step's compile time).
def _pack(tensors: Mapping, spec: tuple):
    import jax.numpy as jnp

    return jnp.concatenate([jnp.ravel(tensors[n]) for n, _ in spec])


def _unpack(vector, spec: tuple) -> dict:
    out, offset = {}, 0
    for n, shape in spec:
        size = int(np.prod(shape, dtype=np.int64))
        out[n] = vector[offset:offset + size].reshape(shape)
        offset += size
    return out


@dataclass(frozen=True)
class _StepStatics:
    layout: _Layout
    config_json: str
    groups: tuple  # ((group, ((name, flax shape), ...)), ...) of the trainable tensors
    ema_spec: tuple  # ((name, flax shape), ...) of every model tensor, or () without EMA
    compute_dtype: str
    param_dtype: str
    label_smoothing: float
    frozen_bn: bool = False


@functools.lru_cache(maxsize=16)
def _config(config_json: str):
    from effv2_spec.training import TrainingConfig

    return TrainingConfig.model_validate_json(config_json)


def _tx(config_json: str, group_names: tuple, lr):
    """The optax chain of the recipe (L2 on the 'decayed' group, clipping, SGD / RMSProp) at learning rate `lr`."""
    from .optim import make_optimizer

    config = _config(config_json)
    return make_optimizer(config, lambda count: lr, {g: g == "decayed" for g in group_names},
                          config.gradient_clip_norm)


def _train_step(statics: _StepStatics, columns: tuple, packed, fixed_p, stats, other, opt_state, ema, x, rowdata, lr,
                ema_rate):
    """One optimisation step. `rowdata` holds each row's soft targets and masks side by side (one transfer):
    `columns` = ((name, width), ...) in that order, 'targets' first; a (N,) mask has width 0."""
    import jax
    import jax.numpy as jnp
    import optax

    masks, offset = {}, 0
    for name, width in columns:
        cols = rowdata[:, offset:offset + max(width, 1)]
        masks[name] = cols[:, 0] if width == 0 else cols
        offset += max(width, 1)
    targets = masks.pop("targets")

    layout = statics.layout
    cdt = jnp.dtype(statics.compute_dtype)
    low = cdt != jnp.dtype(statics.param_dtype)
    specs = dict(statics.groups)
    train_p = {}
    for g, spec in statics.groups:
        train_p.update(_unpack(packed[g], spec))

    def loss_fn(tp):
        allp = {**tp, **fixed_p}
        st = stats
        if low:
            allp = {k: v.astype(cdt) for k, v in allp.items()}
            if statics.frozen_bn:  # inference-mode BN feeds the next conv: it must compute in bfloat16 too
                st = {k: v.astype(cdt) for k, v in stats.items()}
        model = layout.merge(allp, st, other)
        logits = model(jnp.transpose(x, (0, 2, 3, 1)).astype(cdt), True,
                       {k: v.astype(cdt) for k, v in masks.items()})
        logits = logits.astype(statics.param_dtype)
        t = soft_targets(targets.astype(logits.dtype), logits.shape[1], statics.label_smoothing)
        loss = -jnp.sum(t * jax.nn.log_softmax(logits, axis=1)) / logits.shape[0]
        new_stats = {n: v.astype(stats[n].dtype) for n, v in _stats_of(model).items()}
        return loss, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_p)
    gpacked = {g: _pack(grads, spec) for g, spec in specs.items()}
    tx = _tx(statics.config_json, tuple(specs), lr)
    updates, opt_state = tx.update(gpacked, opt_state, packed)
    packed = optax.apply_updates(packed, updates)
    if statics.ema_spec:
        current = dict(fixed_p, **new_stats)
        for g, spec in specs.items():
            current.update(_unpack(packed[g], spec))
        ema = ema - ema_rate.astype(ema.dtype) * (ema - _pack(current, statics.ema_spec))
    correct = jnp.sum(jnp.argmax(logits, axis=1) == jnp.argmax(targets, axis=1))
    return packed, new_stats, opt_state, ema, loss, correct


def _eval_logits(layout: _Layout, params, stats, other, x):
    import jax.numpy as jnp

    model = layout.merge(params, stats, other)
    return model(jnp.transpose(x, (0, 2, 3, 1)), False)


#: compiled steps shared by every backend of this process (key: statics, mask names, mesh)
_TRAIN_FNS: dict = {}


@functools.lru_cache(maxsize=1)
def _eval_fn():
    import jax

    return jax.jit(_eval_logits, static_argnums=(0,))


def _unpack_np(vector: np.ndarray, spec: tuple) -> dict:
    return _unpack(np.asarray(vector), spec)


# ---- the backend --------------------------------------------------------------------------------
class JaxBackend:
    """`TrainingBackend` for JAX / Flax NNX: SPMD data parallel over every device of every process."""

    framework = "jax"

    def __init__(self, plan: TrainingPlan, tensors: Mapping[str, np.ndarray], *, dtype: str = "float32",
                 procs: Processes | None = None, precision: str = "float32"):
        from jax.sharding import NamedSharding, PartitionSpec as P

        from .build import build_model
        from .modules import BatchNorm, as_dtype

        self.plan, self.config = plan, plan.config
        if precision not in PRECISIONS:
            raise TrainSetupError(f"--precision: jax trains in {' or '.join(PRECISIONS)} (got {precision!r})")
        if precision != "float32" and dtype != "float32":
            raise TrainSetupError("--precision bfloat16 (bfloat16 compute, float32 weights) needs --dtype float32")
        self.procs = procs or Processes()
        self.rank, self.world = self.procs.rank, self.procs.world
        n_dev = len(self.procs.devices)
        if plan.batch_size % n_dev:
            raise TrainSetupError(f"batch_size: a global batch of {plan.batch_size} cannot be split over {n_dev} "
                                  f"devices (it must be a multiple of the device count)")
        self.dtype = as_dtype(dtype)
        self.compute_dtype = "bfloat16" if precision == "bfloat16" else self.dtype.name
        model = build_model(plan.base, self.dtype, init=False, seed=plan.seed)
        self.recipe = Recipe.of(self.config, plan.base)
        groups = plan.batch_size // plan.bn_group_size  # SPMD: the global batch's groups, wherever they lie
        for _, m in _iter_modules(model):
            if isinstance(m, BatchNorm):
                m.groups, m.frozen = (groups if groups > 1 else None), self.recipe.frozen_bn
        self.model = model
        self.mesh = self.procs.mesh
        self.replicated = NamedSharding(self.mesh, P())
        self.rows = NamedSharding(self.mesh, P("data"))
        layout, params, stats, _ = _split(model)
        shapes = {n: tuple(v.shape) for n, v in {**params, **stats}.items()}
        self.frozen = self.recipe.frozen
        trainable = sorted(n for n in params if n not in self.frozen)
        decayed = [n for n in trainable if self.recipe.decay_rate and n in self.recipe.decays]
        groups_ = (("decayed", decayed), ("other", [n for n in trainable if n not in decayed]))
        self.groups = tuple((g, tuple((n, shapes[n]) for n in ns)) for g, ns in groups_ if ns)
        self.trainable = tuple(trainable)
        self.ema_spec = tuple((n, shapes[n]) for n in list(params) + list(stats)) if self.config.ema else ()
        self._config_json = self.config.model_dump_json()
        self.steps = 0
        self.compile_seconds: dict[str, float] = {}
        #: persistent-cache lookups while compiling the train steps (a resumed run: hits, no misses)
        self.compile_cache = {"hits": 0, "misses": 0}
        self._rates: tuple = ()
        self._load_model(tensors, ema=None)
        self.opt_state = self._fresh_opt_state()
        self.set_stage(plan.base)

    # -- state on the devices --
    def _put(self, value) -> Any:
        import jax

        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, self.replicated, lambda idx: value[idx])

    def _load_model(self, tensors: Mapping[str, np.ndarray], ema: Mapping[str, np.ndarray] | None) -> None:
        """Model tensors (canonical) onto the devices; the EMA from `ema`, or a copy of the model when None."""
        from .canonical import from_canonical_layout, load_canonical

        load_canonical(self.model, tensors)
        _, params, stats, other = _split(self.model)
        host = {n: np.asarray(v) for n, v in {**params, **stats}.items()}
        self.packed = {g: self._put(np.concatenate([host[n].ravel() for n, _ in spec])) for g, spec in self.groups}
        self.fixed = {n: self._put(host[n]) for n in self.frozen}
        self.stats = {n: self._put(host[n]) for n in stats}
        self.other = tuple(self._put(v) for v in other)
        if self.ema_spec:
            src = host if ema is None else {n: from_canonical_layout(np.asarray(ema[n])).astype(self.dtype)
                                            for n, _ in self.ema_spec}
            self.ema = self._put(np.concatenate([np.asarray(src[n]).ravel() for n, _ in self.ema_spec]))
        else:
            self.ema = self._put(np.zeros((0,), self.dtype))

    def _fresh_opt_state(self):
        import jax

        zero = {g: np.zeros(sum(int(np.prod(s)) for _, s in spec), self.dtype) for g, spec in self.groups}
        state = _tx(self._config_json, tuple(g for g, _ in self.groups), np.asarray(0.0, self.dtype)).init(zero)
        return jax.tree.map(lambda a: self._put(np.asarray(a)), state)

    def _statics(self) -> _StepStatics:
        return _StepStatics(self._train_layout, self._config_json, self.groups, self.ema_spec, self.compute_dtype,
                            self.dtype.name, self.recipe.label_smoothing, self.recipe.frozen_bn)

    # -- stage and step --
    def set_stage(self, resolved: ResolvedModel) -> None:
        """The stage's dropout and per-block drop-path rates (static: the stage's step compiles with them)."""
        dropout, drop_paths = stage_rates(resolved)
        rates = (dropout,) + drop_paths
        if rates == self._rates:
            return
        self._rates = rates
        self._fns: dict = {}  # compiled steps of this stage, by row-data columns
        m = self.model
        for block, rate in zip(m.blocks, drop_paths):
            block.drop_path_rate = rate
        m.dropout = dropout
        saved = m.dtype
        m.dtype = self.compute_dtype
        self._train_layout = _split(m)[0]
        m.dtype = saved
        self._eval_layout = _split(m)[0]

    def _train_fn(self, statics: _StepStatics, columns: tuple):
        import jax

        key = (statics, columns, tuple(d.id for d in self.procs.devices))
        fn = _TRAIN_FNS.get(key)
        if fn is None:
            r, d = self.replicated, self.rows
            fn = jax.jit(functools.partial(_train_step, statics, columns),
                         in_shardings=(r, r, r, r, r, r, d, d, r, r),
                         out_shardings=(r, r, r, r, r, r), donate_argnums=(0, 2, 4, 5))
            _TRAIN_FNS[key] = fn
        return fn

    def _rows(self, value: np.ndarray):
        import jax

        value = np.ascontiguousarray(value)
        if self.world == 1:
            return jax.device_put(value, self.rows)
        shape = (value.shape[0] * self.world,) + value.shape[1:]
        return jax.make_array_from_process_local_data(self.rows, value, shape)

    def _step_inputs(self, x, targets, masks):
        """(compiled step, x on the devices, targets and masks side by side on the devices)."""
        columns = (("targets", targets.shape[1]),) + tuple(
            (k, 0 if np.ndim(v) == 1 else int(np.shape(v)[1])) for k, v in sorted(masks.items()))
        fn = self._fns.get(columns)
        if fn is None:
            fn = self._fns[columns] = self._train_fn(self._statics(), columns)
        parts = [targets] + [np.reshape(v, (len(v), -1)) for _, v in sorted(masks.items())]
        rowdata = np.concatenate(parts, axis=1).astype(self.dtype, copy=False)
        return fn, self._rows(x.astype(self.dtype, copy=False)), self._rows(rowdata)

    def train_step(self, x, targets, masks, *, lr: float, step: int) -> tuple[float, int]:
        import warnings

        fn, xd, rowdata = self._step_inputs(x, targets, masks)
        rate = self.recipe.ema_rate(step + 1)
        args = (self.packed, self.fixed, self.stats, self.other, self.opt_state, self.ema, xd, rowdata,
                self._put(np.asarray(lr, self.dtype)), self._put(np.asarray(rate, self.dtype)))
        clock = compile_clock()
        before, hits, misses = clock.seconds, clock.cache["hits"], clock.cache["misses"]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*donated buffers were not usable.*")
            self.packed, self.stats, self.opt_state, self.ema, loss, correct = fn(*args)
        loss_v = float(np.asarray(loss.addressable_data(0)))
        correct_v = int(np.asarray(correct.addressable_data(0)))
        spent = clock.seconds - before
        if spent > 0:
            key = f"{x.shape[2]}px"
            self.compile_seconds[key] = round(self.compile_seconds.get(key, 0.0) + spent, 3)
            for kind, was in (("hits", hits), ("misses", misses)):
                self.compile_cache[kind] += clock.cache[kind] - was
        if np.isfinite(loss_v):
            self.steps += 1
        return loss_v, correct_v

    # -- host copies --
    def _host_model(self) -> dict:
        """Every model tensor (Flax layout) as numpy, from this process's first device."""
        out = {}
        for g, spec in self.groups:
            out.update(_unpack_np(self.packed[g].addressable_data(0), spec))
        out.update({n: np.asarray(v.addressable_data(0)) for n, v in {**self.fixed, **self.stats}.items()})
        return out

    # -- eval (this process's rows, on its first device, with the replicated state) --
    def logits(self, x, *, use_ema: bool) -> np.ndarray:
        import jax

        dev = self.procs.local_devices[0]
        if use_ema and self.ema_spec:
            host = _unpack_np(self.ema.addressable_data(0), self.ema_spec)
        else:
            host = self._host_model()
        params = {n: jax.device_put(host[n], dev) for n in self._train_layout.param_names}
        stats = {n: jax.device_put(host[n], dev) for n in self.stats}
        other = tuple(v.addressable_data(0) for v in self.other)
        out = _eval_fn()(self._eval_layout, params, stats, other, jax.device_put(np.asarray(x, self.dtype), dev))
        return np.asarray(out).astype(np.float64 if self.dtype == np.float64 else np.float32)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        return self.procs.all_sum(values)

    # -- canonical state --
    def _sign(self, slot: str) -> float:
        """optax's TF RMSProp (lr inside the momentum) keeps -lr * g / d in its trace: the oracle's `mom` negated."""
        opt = self.config.optimizer
        return -1.0 if (opt.type == "rmsprop" and opt.lr_in_momentum and slot == SLOTS["rmsprop"][1]) else 1.0

    def _slot_leaves(self) -> dict:
        """(canonical slot, group) -> index into the optax state's leaves of that group's packed slot."""
        import jax

        from .optim import optax_slot_names

        names = optax_slot_names(self.config.optimizer.type)
        leaves, _ = jax.tree_util.tree_flatten_with_path(self.opt_state)
        groups = {g for g, _ in self.groups}
        out = {}
        for i, (path, _) in enumerate(leaves):
            keys = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
            if len(keys) >= 2 and keys[-1] in groups and keys[-2] in names:
                out[(names[keys[-2]], keys[-1])] = i
        return out

    def state(self) -> tuple[dict, dict, dict]:
        import jax

        from .canonical import to_canonical_layout

        def canonical(d):
            return {n: np.ascontiguousarray(to_canonical_layout(np.asarray(v))) for n, v in d.items()}

        model = canonical(self._host_model())
        leaves = jax.tree.leaves(self.opt_state)
        specs = dict(self.groups)
        opt = {}
        for (slot, g), i in self._slot_leaves().items():
            vec = np.asarray(leaves[i].addressable_data(0)) * self._sign(slot)
            opt.update({f"{slot}/{n}": v for n, v in canonical(_unpack_np(vec, specs[g])).items()})
        opt["steps"] = np.array(self.steps, dtype=np.int64)
        ema = canonical(_unpack_np(self.ema.addressable_data(0), self.ema_spec)) if self.ema_spec else {}
        return model, opt, ema

    def load_state(self, model, optimizer, ema) -> None:
        import jax

        from .canonical import from_canonical_layout
        from .optim import step_count_leaves

        if self.ema_spec:
            missing = sorted(n for n, _ in self.ema_spec if n not in ema)
            if missing:
                raise ValueError(f"EMA state: missing {', '.join(missing[:5])}")
        self._load_model(model, ema if self.ema_spec else None)
        state = self._fresh_opt_state()
        leaves, treedef = jax.tree.flatten(state)
        slots = self._slot_leaves()
        known = {(slot, n) for (slot, _g) in slots for g2, spec in self.groups if g2 == _g for n, _ in spec}
        for key in optimizer:
            if key != "steps" and tuple(key.split("/", 1)) not in known:
                raise ValueError(f"optimizer state: {key!r} does not fit this run")
        for (slot, g), i in slots.items():
            spec = dict(self.groups)[g]
            host = _unpack_np(np.array(leaves[i].addressable_data(0)), spec)
            for n, shape in spec:
                key = f"{slot}/{n}"
                if key in optimizer:
                    value = from_canonical_layout(np.asarray(optimizer[key]))
                    if value.shape != shape:
                        raise ValueError(f"optimizer state: {key!r} has shape {np.shape(optimizer[key])}")
                    host[n] = value * self._sign(slot)
            leaves[i] = self._put(np.concatenate([np.asarray(host[n], self.dtype).ravel() for n, _ in spec]))
        self.steps = int(np.asarray(optimizer.get("steps", 0)))
        for i in step_count_leaves(state):
            leaves[i] = self._put(np.full(np.shape(leaves[i]), self.steps, leaves[i].dtype))
        self.opt_state = jax.tree.unflatten(treedef, leaves)


def _iter_modules(model):
    from flax import nnx

    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module):
            yield path, node


def make_jax_backend(*, dtype: str, device: str | None = None, precision: str = "float32", timeout_s: float = 600.0,
                     coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                     cache: str | None = None):
    """A `make_backend(plan, tensors)` for ProgressiveLoop, and the process layout it uses."""
    if precision not in PRECISIONS:
        raise TrainSetupError(f"--precision {precision}: the jax trainer computes in float32 or bfloat16")
    enable_compilation_cache(cache)
    compile_clock()
    procs = Processes.start(device, coordinator=coordinator, num_processes=num_processes, process_id=process_id,
                            timeout_s=timeout_s)

    def make(plan: TrainingPlan, tensors):
        try:
            plan.shards(procs.world)
        except PlanError as exc:
            raise TrainSetupError(str(exc)) from None
        return JaxBackend(plan, tensors, dtype=dtype, procs=procs, precision=precision)

    return make, procs
