"""JAX training backend: the shared progressive loop (effv2_reference.trainloop) on a Flax NNX model.

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
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from effv2_spec.resolve import ResolvedModel
from effv2_reference.ema import ema_decay
from effv2_reference.plan import PlanError, TrainingPlan
from effv2_reference.trainloop import frozen_names

PRECISIONS = ("float32", "bfloat16")
DEFAULT_CACHE = Path("~/.cache/effv2/jax")
_COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/compilation_cache/cache_retrieval_time_sec")


_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}


class TrainSetupError(ValueError):
    """A run that cannot start as asked (devices, process layout, precision); one line for the user."""


# ---- compile time and the persistent cache -------------------------------------------------
class _CompileClock:
    """Seconds jax spent tracing, lowering and compiling (or loading from the persistent cache)."""

    def __init__(self):
        self.seconds = 0.0
        self.cache = {"hits": 0, "misses": 0}  # persistent compilation cache lookups
        self._lock = threading.Lock()
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listen)
        jax.monitoring.register_event_listener(self._count)

    def _listen(self, event: str, duration: float, **_):
        if event in _COMPILE_EVENTS:
            with self._lock:
                self.seconds += float(duration)

    def _count(self, event: str, **_):
        kind = _CACHE_EVENTS.get(event)
        if kind is not None:
            with self._lock:
                self.cache[kind] += 1


@functools.lru_cache(maxsize=1)
def compile_clock() -> _CompileClock:
    return _CompileClock()


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Point jax's persistent compilation cache at `path` (default $EFFV2_JAX_CACHE or ~/.cache/effv2/jax;
    'off' disables it). A resumed run then loads each stage's compiled step instead of compiling it."""
    import jax

    where = path if path is not None else os.environ.get("EFFV2_JAX_CACHE", str(DEFAULT_CACHE))
    if str(where).lower() in ("", "off", "none", "0"):
        return None
    folder = Path(where).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a cache that cannot be written only costs compile time
    if jax.config.jax_compilation_cache_dir != str(folder):
        jax.config.update("jax_compilation_cache_dir", str(folder))
        try:  # jax opens its cache once per process, at the first compile: open it again at the new place
            from jax._src import compilation_cache

            compilation_cache.reset_cache()
        except (ImportError, AttributeError):
            pass
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return str(folder)


# ---- processes and devices ------------------------------------------------------------------
class Processes:
    """The process layout (jax.distributed) and the device mesh over every process's devices."""

    def __init__(self, platform: str | None = None, initialized: bool = False):
        import jax
        from jax.sharding import AxisType, Mesh

        self.initialized = initialized
        try:
            devices = jax.devices(platform) if platform else jax.devices()
        except RuntimeError as exc:
            raise TrainSetupError(f"--device {platform}: no such jax backend here ({_first_line(exc)})") from None
        self.devices = sorted(devices, key=lambda d: (d.process_index, d.id))
        self.rank, self.world = jax.process_index(), jax.process_count()
        self.local_devices = [d for d in self.devices if d.process_index == self.rank]
        self.mesh = Mesh(np.array(self.devices), ("data",), axis_types=(AxisType.Auto,))

    @classmethod
    def start(cls, device: str | None = None, *, coordinator: str | None = None, num_processes: int | None = None,
              process_id: int | None = None, timeout_s: float = 600.0) -> "Processes":
        """One process, or several through `jax.distributed.initialize` (the options, else JAX_COORDINATOR_ADDRESS,
        JAX_NUM_PROCESSES, JAX_PROCESS_ID from the environment). A coordinator that does not answer within
        `timeout_s` is a TrainSetupError, not a hang."""
        import jax

        env = os.environ
        coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
        if coordinator is None and (num_processes or process_id is not None):
            raise TrainSetupError("--num-processes / --process-id need --coordinator ADDR:PORT")
        initialized = False
        if coordinator is not None:
            try:
                n = int(num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES", "0"))
                i = int(process_id if process_id is not None else env.get("JAX_PROCESS_ID", "-1"))
            except ValueError:
                raise TrainSetupError("JAX_NUM_PROCESSES / JAX_PROCESS_ID: expected integers") from None
            if n < 1 or not 0 <= i < n:
                raise TrainSetupError(f"--coordinator {coordinator}: needs --num-processes N >= 1 and "
                                      f"--process-id in [0, N) (got {n} and {i})")
            platform = _platform(device)
            if platform == "cpu":
                try:  # before the backends start: then only the CPU client joins the service
                    jax.config.update("jax_platforms", "cpu")
                except RuntimeError:
                    pass
            host, port = _address(coordinator)
            # jax's coordination client ends the process (a C++ fatal error) when the service does not answer in
            # time; meet on the coordinator's port first, where a missing peer is a clean one-line error
            _rendezvous(host, port, n, i, timeout_s)
            loopback = host in ("127.0.0.1", "localhost", "::1")
            try:
                jax.distributed.initialize(coordinator, n, i, initialization_timeout=max(1, int(timeout_s)),
                                           heartbeat_timeout_seconds=max(10, int(timeout_s)),
                                           shutdown_timeout_seconds=max(10, int(min(timeout_s, 60))),
                                           coordinator_bind_address=coordinator if loopback else None)
            except (RuntimeError, ValueError) as exc:
                raise TrainSetupError(f"--coordinator {coordinator}: process {i} of {n} could not join within "
                                      f"{timeout_s:.0f} s ({_first_line(exc)})") from None
            initialized = True
        return cls(_platform(device), initialized)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        if self.world == 1:
            return values
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(np.asarray(values))).sum(axis=0).astype(
            np.asarray(values).dtype)

    def close(self) -> None:
        if self.initialized:
            import jax

            try:
                jax.distributed.shutdown()
            except RuntimeError:
                pass
            self.initialized = False


def _address(coordinator: str) -> tuple[str, int]:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TrainSetupError(f"--coordinator: expected HOST:PORT (got {coordinator!r})")
    return host.strip("[]"), int(port)


def _rendezvous(host: str, port: int, n: int, i: int, timeout_s: float) -> None:
    """Every process checks in on the coordinator's port before jax.distributed starts there.

    Process 0 listens on HOST:PORT until the other n - 1 processes have sent their index, answers each
    'go' and closes the port (jax's coordination service binds it next); the others connect (retrying
    until the deadline) and wait for 'go'. Nothing arriving within `timeout_s` is a TrainSetupError."""
    import socket
    import time

    if n == 1:
        return
    deadline = time.monotonic() + timeout_s
    where = f"{host}:{port}"
    if i == 0:
        try:
            server = socket.create_server((host, port), reuse_port=False)
        except OSError as exc:
            raise TrainSetupError(f"--coordinator {where}: process 0 cannot listen there ({exc.strerror or exc})") \
                from None
        peers: dict[int, socket.socket] = {}
        try:
            while len(peers) < n - 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(range(1, n)) - set(peers))
                    raise TrainSetupError(f"--coordinator {where}: process(es) {', '.join(map(str, missing))} of {n} "
                                          f"did not join within {timeout_s:.0f} s")
                server.settimeout(left)
                try:
                    conn, _ = server.accept()
                except socket.timeout:
                    continue
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    peer = int(conn.recv(64).decode().strip() or -1)
                except (OSError, ValueError):
                    conn.close()
                    continue
                if not 0 < peer < n or peer in peers:
                    conn.close()
                    raise TrainSetupError(f"--coordinator {where}: a process announced index {peer} (expected "
                                          f"1..{n - 1}, each once)")
                peers[peer] = conn
            for conn in peers.values():
                conn.sendall(b"go\n")
        finally:
            for conn in peers.values():
                conn.close()
            server.close()
        return
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TrainSetupError(f"--coordinator {where}: no answer from process 0 within {timeout_s:.0f} s")
        try:
            with socket.create_connection((host, port), timeout=min(left, 5.0)) as conn:
                conn.sendall(f"{i}\n".encode())
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                if conn.recv(16).startswith(b"go"):
                    return
        except (OSError, socket.timeout):
            pass
        time.sleep(0.2)


def _platform(device: str | None) -> str | None:
    if device is None:
        return None
    name = device.split(":")[0].lower()
    name = {"cuda": "gpu", "rocm": "gpu"}.get(name, name)
    if name not in ("cpu", "gpu", "tpu"):
        raise TrainSetupError(f"--device: expected cpu, gpu (cuda) or tpu for jax (got {device!r})")
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---- the model's state as flat dicts ----------------------------------------------------------
def _leaf_name(path) -> str | None:
    """The canonical name of a Param / BatchStat leaf of an nnx.State (None for rng state)."""
    from .modules import _LEAF_TO_CANONICAL, canonical_name

    keys = [getattr(p, "key", getattr(p, "name", p)) for p in path]
    if keys and keys[-1] == "value":
        path, keys = path[:-1], keys[:-1]
    if not keys or str(keys[-1]) not in _LEAF_TO_CANONICAL or str(keys[0]) == "rngs":
        return None
    return canonical_name(path)


@dataclass(frozen=True)
class _Layout:
    """Static description of the model's state (hashable: part of the compiled step's key)."""

    graphdef: Any
    param_def: Any
    param_names: tuple
    rest_def: Any
    rest_names: tuple  # canonical name, or None for a leaf kept as is (rng state)
    key_impls: tuple = ()  # per rng leaf: the PRNG implementation of a key (stored as its raw data), or None

    def merge(self, params: Mapping, stats: Mapping, other: tuple):
        import jax
        from flax import nnx

        it = iter(jax.random.wrap_key_data(v, impl=impl) if impl is not None else v
                  for v, impl in zip(other, self.key_impls))
        p = jax.tree.unflatten(self.param_def, [params[n] for n in self.param_names])
        r = jax.tree.unflatten(self.rest_def, [stats[n] if n is not None else next(it) for n in self.rest_names])
        return nnx.merge(self.graphdef, p, r)


def _split(model):
    import jax
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pl, pdef = jax.tree_util.tree_flatten_with_path(params)
    rl, rdef = jax.tree_util.tree_flatten_with_path(rest)
    rest_names = tuple(_leaf_name(p) for p, _ in rl)
    other = [v for n, (_, v) in zip(rest_names, rl) if n is None]
    impls = tuple(jax.random.key_impl(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else None
                  for v in other)
    other = tuple(np.asarray(jax.random.key_data(v)) if impl is not None else np.asarray(v)
                  for v, impl in zip(other, impls))
    layout = _Layout(graphdef, pdef, tuple(_leaf_name(p) for p, _ in pl), rdef, rest_names, impls)
    values = {n: v for n, (_, v) in zip(layout.param_names, pl)}
    stats = {n: v for n, (_, v) in zip(rest_names, rl) if n is not None}
    return layout, values, stats, other


def _stats_of(model) -> dict:
    import jax
    from flax import nnx

    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.BatchStat))
    return {_leaf_name(p): v for p, v in leaves}


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
        k = logits.shape[1]
        t = targets.astype(logits.dtype)
        s = statics.label_smoothing
        if s:
            t = t * (1.0 - s) + s / k
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
        groups = plan.batch_size // plan.bn_group_size
        frozen_bn = self.config.batch_norm.mode == "frozen"
        for _, m in _iter_modules(model):
            if isinstance(m, BatchNorm):
                m.groups, m.frozen = (groups if groups > 1 else None), frozen_bn
        self.model = model
        self.mesh = self.procs.mesh
        self.replicated = NamedSharding(self.mesh, P())
        self.rows = NamedSharding(self.mesh, P("data"))
        layout, params, stats, _ = _split(model)
        shapes = {n: tuple(v.shape) for n, v in {**params, **stats}.items()}
        self.frozen = frozen_names(self.config, list(params))
        roles = set(self.config.weight_decay.applies_to)
        trainable = sorted(n for n in params if n not in self.frozen)
        decayed = [n for n in trainable if self.config.weight_decay.rate and plan.base.param(n).role in roles]
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
        from .modules import from_canonical_layout, load_canonical

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
                            self.dtype.name, float(self.config.label_smoothing),
                            self.config.batch_norm.mode == "frozen")

    # -- stage and step --
    def set_stage(self, resolved: ResolvedModel) -> None:
        """The stage's dropout and per-block drop-path rates (static: the stage's step compiles with them)."""
        rates = (float(resolved.classifier.dropout),) + tuple(float(r.drop_path_rate) for r in resolved.blocks)
        if rates == self._rates:
            return
        self._rates = rates
        self._fns: dict = {}  # compiled steps of this stage, by row-data columns
        m = self.model
        for block, row in zip(m.blocks, resolved.blocks):
            block.drop_path_rate = float(row.drop_path_rate)
        m.dropout = float(resolved.classifier.dropout)
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
        rate = 1.0 - ema_decay(self.config.ema, step + 1) if self.config.ema is not None else 0.0
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
        return -1.0 if (opt.type == "rmsprop" and opt.lr_in_momentum and slot == "mom") else 1.0

    def _slot_leaves(self) -> dict:
        """(canonical slot, group) -> index into the optax state's leaves of that group's packed slot."""
        import jax

        kind = self.config.optimizer.type
        names = {"sgd": {"trace": "momentum"}, "rmsprop": {"nu": "ms", "trace": "mom"}}[kind]
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

        from .modules import to_canonical_layout

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

        from .modules import from_canonical_layout

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
