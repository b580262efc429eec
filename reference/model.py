"""`ReferenceModel`: the NumPy/Numba oracle network, built only from the resolved tables.

It walks `effv2_spec.resolve.resolve(spec)` (stem, block layers, head, classifier) and
implements docs/internals.md exactly: run-time padding from the actual input size, BN
with biased batch variance and the spec's running-variance convention, SE, residual with
drop path, pool, dropout, dense. Every unit (stem, block layers, head) runs through the op
pair of its kind, `units.UNIT_OPS[unit.kind]`, which reads the unit's fields and tensors: this
module reads neither, so a new unit field is read in units.py only. A training forward records
a tape of per-op caches (plain tuples, no closures; a unit's entry is ("unit", unit, cache));
`backward` replays it in reverse and accumulates gradients with `+=`. Random masks come from
`self.rng` unless given, and are recorded in `last_masks` under the canonical mask names so
other backends can replay them.

BN modes: train-mode BN normalises contiguous groups of `bn_group_size` samples with their
own statistics (running-statistics rule: ops/batchnorm.py); `frozen_bn` trains with BN in
inference mode (running statistics, not updated, gamma and beta still differentiated).
An eval forward keeps only its input: `backward` after it re-runs that forward with a tape,
so evaluation loops cost what they did, and eval-mode gradients (saliency) still work.

Public tensors use canonical layouts (input NCHW, conv OIHW, dense (out, in)); the
activations in between are CNHW (see ops/conv.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from effv2_spec.resolve import ResolvedModel, as_resolved, resolve
from effv2_spec.weights import WeightsError, check_tensors, load_weights, save_weights

from . import ops
from .units import UNIT_OPS, Conventions, RunMode, unit_tensors
from effv2_train.init import init_tensor  # noqa: F401 (re-exported: callers import it from here)

_DTYPES = {"float32": np.float32, "float64": np.float64}

@dataclass(frozen=True)
class _EvalReplay:
    """What an eval forward leaves for `backward`: its private cast input, re-run with a tape on demand."""
    x: np.ndarray


def bn_group_count(bn_group_size, batch: int) -> int:
    """The number of BN statistics groups for a batch (bn_group_size None: one group, the whole batch)."""
    if bn_group_size is None:
        return 1
    if isinstance(bn_group_size, bool) or not isinstance(bn_group_size, (int, np.integer)) or bn_group_size < 1:
        raise ValueError(f"forward: bn_group_size must be a positive int or None, got {bn_group_size!r}")
    if batch % bn_group_size:
        raise ValueError(f"forward: bn_group_size {bn_group_size} must divide the batch size {batch} (the batch "
                         "is cut into contiguous groups of bn_group_size samples)")
    return batch // int(bn_group_size)


class ReferenceModel:
    """The oracle. `forward(x NCHW) -> logits`; `backward(dlogits) -> {name: grad}` after a forward."""

    def __init__(self, spec_or_resolved, dtype: str = "float32", seed: int = 0):
        self.resolved = as_resolved(spec_or_resolved)
        if str(np.dtype(dtype)) not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        # the parameters are consecutive pieces of one buffer, so that an optimiser step is one kernel call
        # (optim.SGDOptimizer); everything writes them in place (load_state_dict too), never rebinds them
        flat = np.empty(sum(int(np.prod(e.shape)) for e in self.resolved.params if e.trainable), self.dtype)
        at = 0
        for entry in self.resolved.params:
            value = init_tensor(self.rng, entry, self.dtype)
            if entry.trainable:
                self.params[entry.name] = flat[at:at + value.size].reshape(value.shape)
                self.params[entry.name][...] = value
                at += value.size
            else:
                self.buffers[entry.name] = value
        self.last_masks: dict[str, np.ndarray] = {}
        self._tape: list | None = None
        self.set_resolved(self.resolved)

    def set_resolved(self, resolved: ResolvedModel) -> None:
        """Use `resolved`, a table that differs from the current one only in dropout / drop-path
        rates (progressive learning raises them stage by stage); the masks accepted follow it."""
        if [p.shape for p in resolved.params] != [p.shape for p in self.resolved.params]:
            raise ValueError("set_resolved: the new table must have the same parameters as the model's")
        self.resolved = resolved
        # each unit's tensors by local name, the arrays of params and buffers themselves (written in place,
        # never rebound): collected here once, not per forward (units.py)
        self._units = unit_tensors(resolved, {**self.params, **self.buffers})
        self._conventions = Conventions.of(resolved)
        self.mask_names = tuple(
            [f"{b.name}.drop_path" for b in resolved.blocks if b.residual and b.drop_path_rate > 0]
            + (["classifier.dropout"] if resolved.classifier.dropout > 0 else []))

    # ---- forward -------------------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False, masks: Mapping[str, np.ndarray] | None = None, *,
                bn_group_size: int | None = None, frozen_bn: bool = False, bn_sync: ops.BatchNormSync | None = None):
        """Logits (N, num_classes) for images x (N, C, H, W).

        training=True: dropout and drop path with `masks` (drawn from `self.rng` when missing,
        recorded in `last_masks`), a tape for `backward`, and BN with batch statistics of each
        contiguous group of `bn_group_size` samples (None: the whole batch; it must divide N),
        running stats updated in place by the rule of ops/batchnorm.py. frozen_bn=True: BN uses
        the running statistics and leaves them alone; dropout and drop path stay on.
        bn_sync: this process is one of several training on shards of one batch (ops/batchnorm.py:
        its group may span processes; running statistics are averaged over them).
        training=False: running statistics, no dropout or drop path; `backward` then gives
        eval-mode gradients (it re-runs this forward with a tape, at the current parameters).
        """
        r = self.resolved
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != r.input_channels:
            raise ValueError(f"forward: expected input (N, {r.input_channels}, H, W), got shape {x.shape}")
        masks = dict(masks or {})
        unknown = sorted(set(masks) - set(self.mask_names))
        if unknown:
            raise ValueError(f"forward: unknown mask(s) {', '.join(unknown)}; this model takes "
                             f"{', '.join(self.mask_names) or 'none'}")
        groups = bn_group_count(bn_group_size, x.shape[0])
        if bn_sync is not None and bn_sync.group_sum is not None and groups != 1:
            raise ValueError("forward: with a BN group spanning processes (bn_sync.group_sum), bn_group_size must "
                             "be None (this process's rows are one part of that group)")
        self._tape = None
        self.last_masks = {}
        x = x.astype(self.dtype)  # a private copy: an eval forward keeps it for `backward`
        if not training:
            logits = self._run(x, None, regularise=False, batch_stats=False, groups=1, masks=masks)
            self._tape = _EvalReplay(x)
            return logits
        tape: list = []
        logits = self._run(x, tape, regularise=True, batch_stats=not frozen_bn, groups=groups, masks=masks,
                           sync=bn_sync)
        self._tape = tape
        return logits

    __call__ = forward

    def _run(self, x: np.ndarray, tape: list | None, *, regularise: bool, batch_stats: bool, groups: int,
             masks: dict, sync: ops.BatchNormSync | None = None) -> np.ndarray:
        """The network on a cast NCHW batch. tape: where to record (None: nowhere); regularise:
        dropout and drop path on; batch_stats: train-mode BN in `groups` groups (`sync`: with other
        processes), else running stats."""
        r = self.resolved
        if r.normalize_in_model:
            mean = np.asarray(r.input_mean, dtype=self.dtype)[None, :, None, None]
            std = np.asarray(r.input_std, dtype=self.dtype)[None, :, None, None]
            x = (x - mean) / std
        h = np.ascontiguousarray(x.transpose(1, 0, 2, 3))
        n = h.shape[1]
        record = tape is not None
        mode = RunMode(batch_stats, groups, sync, record)
        h = self._unit(r.stem, h, tape, mode)
        for block in r.blocks:
            x_in = h
            if record and block.residual:
                # replayed in reverse: skip_out stacks the gradient, skip_in adds it at the block input
                tape.append(("skip_in", block.name, None))
            for layer in block.layers:
                h = self._unit(layer, h, tape, mode)
            if block.residual:
                rate = block.drop_path_rate
                if regularise and rate > 0:
                    mask = self._mask(f"{block.name}.drop_path", (n,), rate, masks)
                    h, scale = ops.drop_path_forward(h, mask, rate)
                    tape.append(("drop_path", block.name, scale))
                h = h + x_in
                if record:
                    tape.append(("skip_out", block.name, None))
        h = self._unit(r.head, h, tape, mode)
        f, pool_shape = ops.global_avg_pool_forward(h)
        if record:
            tape.append(("pool", "head", pool_shape))
        rate = r.classifier.dropout
        if regularise and rate > 0:
            f, scale = ops.dropout_forward(f, self._mask("classifier.dropout", f.shape, rate, masks), rate)
            tape.append(("dropout", "classifier", scale))
        dense = self._units[r.classifier.name]
        logits, cache = ops.dense_forward(f, dense["weight"], dense["bias"])
        if record:
            tape.append(("dense", "classifier", cache))
        return logits

    def _mask(self, name: str, shape: tuple, rate: float, masks: dict) -> np.ndarray:
        if name in masks:
            m = np.asarray(masks[name])
            if m.shape != tuple(shape):
                raise ValueError(f"mask {name}: expected shape {tuple(shape)}, got {m.shape}")
            m = m.astype(self.dtype)
        else:
            m = ops.keep_mask(self.rng, shape, rate, self.dtype)
        self.last_masks[name] = m
        return m

    def _unit(self, unit, h: np.ndarray, tape: list | None, mode: RunMode) -> np.ndarray:
        """One unit (stem, head, a block's layer) by its kind's op (units.py), its cache on the tape."""
        h, cache = UNIT_OPS[unit.kind][0](unit, self._units[unit.name], h, self._conventions, mode)
        if tape is not None:
            tape.append(("unit", unit, cache))
        return h

    # ---- backward ------------------------------------------------------------------------
    def backward(self, dlogits: np.ndarray, return_input_grad: bool = False):
        """Gradients of sum(logits * dlogits) for every trainable parameter (canonical names).

        Uses the tape of the last forward (consumed here): train mode as it ran (BN groups,
        frozen BN, masks); after an eval forward, eval-mode gradients (running statistics, no
        dropout or drop path). With `return_input_grad`, returns (grads, dx) with dx shaped
        like the input (N, C, H, W), e.g. for saliency maps.
        """
        if self._tape is None:
            raise RuntimeError("backward: call forward(x) first (each forward's tape is used by one backward)")
        tape, self._tape = self._tape, None
        if isinstance(tape, _EvalReplay):
            tape_list: list = []
            self._run(tape.x, tape_list, regularise=False, batch_stats=False, groups=1, masks={})
            tape = tape_list
        r = self.resolved
        grads: dict[str, np.ndarray] = {}  # each parameter's gradient arrives once; _add sums if not
        g = np.asarray(dlogits, dtype=self.dtype)
        skips: list[np.ndarray] = []
        first = tape[0] if tape else None  # the stem: its input's gradient is only computed when asked for
        for entry in reversed(tape):
            kind, unit, cache = entry
            if kind == "dense":
                g, dw, db = ops.dense_backward(g, cache)
                names = self._units[r.classifier.name].names
                self._add(grads, names["weight"], dw)
                self._add(grads, names["bias"], db)
            elif kind == "dropout":
                g = ops.dropout_backward(g, cache)
            elif kind == "pool":
                g = ops.global_avg_pool_backward(g, cache)
            elif kind == "unit":
                g, unit_grads = UNIT_OPS[unit.kind][1](unit, self._units[unit.name], g, cache, self._conventions,
                                                       need_dx=return_input_grad or entry is not first)
                for name, d in unit_grads.items():
                    self._add(grads, name, d)
            elif kind == "drop_path":
                g = ops.drop_path_backward(g, cache)
            elif kind == "skip_out":
                skips.append(g)
            elif kind == "skip_in":
                g = g + skips.pop()
            else:  # pragma: no cover - the tape only holds the kinds above
                raise AssertionError(kind)
        grads = {name: grads[name] if name in grads else np.zeros_like(v) for name, v in self.params.items()}
        if not return_input_grad:
            return grads
        dx = g.transpose(1, 0, 2, 3)
        if r.normalize_in_model:
            dx = dx / np.asarray(r.input_std, dtype=self.dtype)[None, :, None, None]
        return grads, np.ascontiguousarray(dx)

    def _add(self, grads: dict, name: str, d: np.ndarray) -> None:
        """grads[name] += d, without a zero-filled array to start from (a step's own fresh arrays are kept)."""
        d = np.asarray(d, dtype=self.dtype).reshape(self.params[name].shape)
        grads[name] = grads[name] + d if name in grads else d

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed by canonical name."""
        return {name: v.copy() for name, v in {**self.params, **self.buffers}.items()}

    def load_state_dict(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Copy canonical tensors in (cast to the model dtype); names and shapes must match exactly."""
        tensors = {k: np.asarray(v) for k, v in tensors.items()}
        check_tensors(self.resolved, tensors)
        for name, v in tensors.items():
            target = self.params if name in self.params else self.buffers
            target[name][...] = v.astype(self.dtype)

    def save(self, path) -> None:
        """Canonical safetensors with the spec JSON in the metadata (atomic)."""
        save_weights(path, self.resolved.spec, self.state_dict())

    @classmethod
    def load(cls, path, spec=None, *, dtype: str | None = None, seed: int = 0) -> "ReferenceModel":
        """A model from a weights file; its spec comes from the file (or `spec`, which must then agree)."""
        file_spec, tensors = load_weights(path)
        if spec is not None:
            resolved = as_resolved(spec)
            if file_spec is not None and file_spec.model_dump_json() != resolved.spec.model_dump_json():
                raise WeightsError(f"{path}: weights were saved for spec {file_spec.name!r}, which differs from "
                                   f"the given spec {resolved.spec.name!r}")
        elif file_spec is None:
            raise WeightsError(f"{path}: no spec in the file metadata; pass spec=")
        else:
            resolved = resolve(file_spec)
        if dtype is None:
            kinds = {str(v.dtype) for v in tensors.values()}
            dtype = "float64" if kinds == {"float64"} else "float32"
        model = cls(resolved, dtype=dtype, seed=seed)
        model.load_state_dict(tensors)
        return model
