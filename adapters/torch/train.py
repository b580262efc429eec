"""PyTorch training backend: the shared progressive loop (effv2_train.trainloop) on a torch model.

Everything that is not framework code (the plan, the data pipeline, the masks, the stage table,
checkpoints, resume) comes from the loop; this module holds the model, one optimisation step,
the eval forward, the collectives and the conversion of optimiser state to the canonical slots.

Distributed (torchrun): each process computes its rows of the global batch (`plan.shards`).
DistributedDataParallel averages gradients over processes, the local loss is a mean over local
rows, so the step is the global batch's. BN groups follow the config: a group inside a process
is a local BN; a group spanning k processes sums its statistics over them with a differentiable
all-reduce (CPU and CUDA alike; SyncBatchNorm is CUDA-only); running statistics are averaged
over all processes each step, so every copy is identical (buffers are never broadcast).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from datetime import timedelta
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from effv2_spec.resolve import ResolvedModel
from effv2_train.plan import PlanError, TrainingPlan
from effv2_train.recipe import Recipe, batch_norm_layout, soft_targets, stage_rates

from .build import as_dtype, build_model
from .modules import BatchNorm, EfficientNet
from .optim import make_optimizer, native_slot_keys, recipe_gradients, restore_slot

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainSetupError(ValueError):
    """A run that cannot start as asked (device, process layout, precision); one line for the user."""


# ---- processes --------------------------------------------------------------------------------
class Processes:
    """The process layout: rank, world size and the collectives (one process: identities)."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")

    @classmethod
    def from_environment(cls, device: torch.device, timeout_s: float) -> "Processes":
        """torchrun's RANK / WORLD_SIZE (nccl on CUDA, gloo on CPU); one process when they are absent."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, device)
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        rank = dist.get_rank()
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        return cls(rank, dist.get_world_size(), device)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.as_tensor(np.asarray(values)).to(self.device)
        dist.all_reduce(t)
        return t.cpu().numpy()

    def close(self) -> None:
        """Tear the process group down together: a rank that destroyed its side while a peer was still finishing
        (writing the checkpoint, reporting) could end that peer's gloo threads mid-connection, a C++ abort
        ("terminate called without an active exception") after a run that had succeeded."""
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()


def configure_batch_norm(model: EfficientNet, plan: TrainingPlan, procs: Processes) -> None:
    """Give every BN the plan's statistics groups for this process layout (the recipe's `batch_norm_layout`)."""
    try:
        group_size, span = batch_norm_layout(plan, procs.world)
    except PlanError as exc:
        raise TrainSetupError(str(exc)) from None
    if group_size == plan.batch_size:  # one process, one group: the plain batch statistics
        group_size = None
    group_sum = _group_sum(procs, span) if span > 1 else None
    replica_mean = _replica_mean(procs) if procs.world > 1 else None
    for m in model.modules():
        if isinstance(m, BatchNorm):
            m.group_size, m.group_span, m.group_sum, m.replica_mean = group_size, span, group_sum, replica_mean


def _group_sum(procs: Processes, span: int):
    import torch.distributed as dist
    import torch.distributed.nn.functional as dnnf

    # every process must create every sub-group, in the same order
    groups = [dist.new_group(list(range(i, i + span))) for i in range(0, procs.world, span)]
    mine = groups[procs.rank // span]
    whole = span == procs.world

    def group_sum(t: torch.Tensor) -> torch.Tensor:
        # the differentiable all-reduce; its suggested replacement lives in a private module
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return dnnf.all_reduce(t) if whole else dnnf.all_reduce(t, group=mine)

    return group_sum


def _replica_mean(procs: Processes):
    import torch.distributed as dist

    def replica_mean(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t / procs.world

    return replica_mean


def set_rates(model: EfficientNet, resolved: ResolvedModel) -> None:
    """The stage's dropout and per-block drop-path rates (the resolved table of the stage)."""
    model.dropout, drop_paths = stage_rates(resolved)
    for block, rate in zip(model.blocks, drop_paths):
        block.drop_path_rate = rate


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """mean_n -sum_k t * log_softmax(logits) with the recipe's soft targets t (effv2_train.recipe)."""
    t = soft_targets(targets, logits.shape[1], smoothing)
    return -(t * F.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                               dim=1)).sum() / logits.shape[0]


# ---- the backend ------------------------------------------------------------------------------
class TorchBackend:
    """`TrainingBackend` for PyTorch: a DDP-wrapped EfficientNet when several processes run."""

    framework = "torch"

    def __init__(self, plan: TrainingPlan, tensors: Mapping[str, np.ndarray], *, dtype: str = "float32",
                 procs: Processes | None = None, precision: str = "float32", channels_last: bool = False,
                 compile: bool = False):
        self.plan, self.config = plan, plan.config
        self.procs = procs or Processes()
        self.rank, self.world = self.procs.rank, self.procs.world
        self.device = self.procs.device
        if precision not in PRECISIONS:
            raise TrainSetupError(f"--precision: one of {', '.join(PRECISIONS)} (got {precision!r})")
        if precision != "float32" and dtype != "float32":
            raise TrainSetupError("--precision bfloat16/float16 (autocast) needs --dtype float32")
        self.autocast_dtype = PRECISIONS[precision]
        self.scaler = None
        if precision == "float16":
            if self.device.type != "cuda":
                raise TrainSetupError("--precision float16 needs a CUDA device (use bfloat16 on CPU)")
            self.scaler = torch.amp.GradScaler("cuda")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.dtype = as_dtype(dtype)
        model = build_model(plan.base, self.dtype, init=False)
        model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in tensors.items()})
        model.to(self.device, memory_format=self.memory_format)
        self.net = model
        configure_batch_norm(model, plan, self.procs)
        self.recipe = Recipe.of(self.config, plan.base)
        self.frozen_bn = self.recipe.frozen_bn
        for name, p in model.named_parameters():
            p.requires_grad_(name not in self.recipe.frozen)
        self.named = {n: p for n, p in model.named_parameters() if n not in self.recipe.frozen}
        self.optimizer = make_optimizer(self.named, self.config, decays=self.recipe.decays)
        self.slot_keys = native_slot_keys(self.optimizer, self.config.optimizer.type)
        self.steps = 0
        self.ema = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                    if self.config.ema is not None else None)
        self.train_net = model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            kwargs = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            with warnings.catch_warnings():  # its replacement still syncs buffers at init; we keep our own rule
                warnings.simplefilter("ignore", FutureWarning)
                self.train_net = DDP(model, broadcast_buffers=False, **kwargs)
        if compile:
            self.train_net = torch.compile(self.train_net)

    # -- stage and step --
    def set_stage(self, resolved: ResolvedModel) -> None:
        set_rates(self.net, resolved)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        """A host batch array on the device, in the training dtype. On CUDA the copy goes through pinned
        memory and does not wait: the host goes on to the next batch while the copy runs (the pinned buffer
        is held by torch's host allocator until the copy's stream is done with it). On CPU unchanged."""
        t = torch.from_numpy(a)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True).to(self.dtype)
        return t.to(self.device, self.dtype)

    def _input(self, x: np.ndarray) -> torch.Tensor:
        return self._to_device(x).contiguous(memory_format=self.memory_format)

    def train_step(self, x, targets, masks, *, lr: float, step: int) -> tuple[float, int]:
        net = self.net
        net.train()
        if self.frozen_bn:
            for m in net.modules():
                if isinstance(m, BatchNorm):
                    m.eval()
        xt = self._input(x)
        tt = self._to_device(targets)
        mt = {k: self._to_device(v) for k, v in masks.items()}
        with self._autocast():
            logits = self.train_net(xt, mt)
        loss = soft_cross_entropy(logits, tt, self.recipe.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        stats = torch.stack([loss.detach().to(torch.float64),
                             (logits.detach().argmax(1) == tt.argmax(1)).sum().to(torch.float64)])
        total = self.procs.all_sum(stats.cpu().numpy())
        mean_loss, correct = float(total[0]) / self.world, int(round(total[1]))
        if not np.isfinite(mean_loss):
            return mean_loss, correct
        self._update(lr)
        self.steps += 1
        if self.ema is not None:
            self._ema_update(step + 1)
        return mean_loss, correct

    @torch.no_grad()
    def _update(self, lr: float) -> None:
        recipe_gradients(self.named, self.recipe)  # L2, then the clip factor, as the oracle does
        for group in self.optimizer.param_groups:
            group["lr"] = float(lr)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    @torch.no_grad()
    def _ema_update(self, num_updates: int) -> None:
        rate = self.recipe.ema_rate(num_updates)
        for k, v in self.net.state_dict().items():
            s = self.ema[k]
            s.sub_((s - v) * rate)

    # -- eval --
    @torch.no_grad()
    def logits(self, x, *, use_ema: bool) -> np.ndarray:
        net = self.net
        saved = None
        if use_ema and self.ema is not None:
            saved = {k: v.clone() for k, v in net.state_dict().items()}
            net.load_state_dict(self.ema)
        try:
            net.eval()
            with self._autocast():
                out = net(self._input(x))
            return out.to(torch.float64 if self.dtype == torch.float64 else torch.float32).cpu().numpy()
        finally:
            if saved is not None:
                net.load_state_dict(saved)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        return self.procs.all_sum(values)

    # -- canonical state --
    def state(self) -> tuple[dict, dict, dict]:
        model = {k: v.detach().cpu().numpy().copy() for k, v in self.net.state_dict().items()}
        opt: dict[str, np.ndarray] = {}
        for name, p in self.named.items():
            state = self.optimizer.state.get(p, {})
            for slot, key in self.slot_keys.items():
                v = state.get(key)
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    opt[f"{slot}/{name}"] = v.detach().cpu().numpy().copy()
        opt["steps"] = np.array(self.steps, dtype=np.int64)
        ema = {k: v.cpu().numpy().copy() for k, v in self.ema.items()} if self.ema is not None else {}
        return model, opt, ema

    def load_state(self, model, optimizer, ema) -> None:
        self.net.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in model.items()})
        back = self.slot_keys
        self.optimizer.state.clear()
        steps = int(np.asarray(optimizer.get("steps", 0)))
        for key, v in optimizer.items():
            if key == "steps":
                continue
            slot, _, name = key.partition("/")
            if slot not in back or name not in self.named:
                raise ValueError(f"optimizer state: {key!r} does not fit this run")
            p = self.named[name]
            restore_slot(self.optimizer, p, back[slot], torch.from_numpy(np.array(v, copy=True)).to(p.device, p.dtype),
                         steps)
        self.steps = steps
        if self.ema is not None:
            self.ema = {k: torch.from_numpy(np.array(ema[k], copy=True)).to(self.device) for k in self.ema}


def make_torch_backend(*, dtype: str, device: str | None, precision: str, channels_last: bool, compile: bool,
                       timeout_s: float = 600.0):
    """A `make_backend(plan, tensors)` for ProgressiveLoop, and the process layout it uses."""
    dev = resolve_device(device)
    procs = Processes.from_environment(dev, timeout_s)

    def make(plan: TrainingPlan, tensors):
        if plan.batch_size % procs.world:
            raise TrainSetupError(f"batch_size: a global batch of {plan.batch_size} cannot be split over "
                                  f"{procs.world} processes (it must be a multiple of the world size)")
        try:
            plan.shards(procs.world)
        except PlanError as exc:
            raise TrainSetupError(str(exc)) from None
        return TorchBackend(plan, tensors, dtype=dtype, procs=procs, precision=precision,
                            channels_last=channels_last, compile=compile)

    return make, procs


def resolve_device(device: str | None) -> torch.device:
    """cpu, cuda or cuda:N; default cuda when available. Asking for CUDA without one is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise TrainSetupError(f"--device: expected cpu, cuda or cuda:N (got {device!r})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainSetupError(f"--device {device}: CUDA is not available in this PyTorch build or machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainSetupError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise TrainSetupError(f"--device: expected cpu, cuda or cuda:N (got {device!r})")
    return dev
