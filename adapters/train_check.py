"""Conformance of training: a framework trainer and the oracle run the same short progressive
run and must end in the same state (`effv2 check SPEC --framework torch --train-steps K`).

The run: two stages (two image sizes; RandAugment, mixup, cutmix, dropout and drop path all on
and raised in the second stage), RMSProp with the TF conventions or SGD with Nesterov, label
smoothing, weight decay by role, EMA, random-resized crop and flip, BN statistics in groups,
on a fixed slice of the embedded digits. Both sides write canonical checkpoints; every model
tensor (parameters and BN statistics), optimiser slot and EMA tensor is compared.

Error measure: max|a - b| / scale, scale = max|reference|, except for tensors that are zero in
exact arithmetic and hold rounding noise on both sides (a BN beta whose output reaches the next
training-mode BN only through linear layers has a zero gradient, so its value, slots and the
next BN's running mean are noise): those are measured on their unit's largest magnitude, as the
gradient check does (conformance.numerics.gradient_scales).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.documents import parse_obj
from effv2_train.lifeline import tied_to_parent

from .conformance.numerics import gradient_scales

TOLERANCE = {"float64": 1e-9, "float32": 1e-3}

#: the training recipes a check can run (`--recipe`): changes to the check's training document. The default
#: normalises with BN statistics in groups; 'clipped-frozen-bn' clips every step (a clip norm well under the
#: check's gradient norms) and freezes BN (running statistics, gamma and beta fixed), the fields a trainer could
#: ignore without the default check noticing
RECIPES = {"default": {}, "clipped-frozen-bn": {"gradient_clip_norm": 0.05,
                                                "batch_norm": {"mode": "frozen", "freeze_affine": True}}}

#: the training document's fields each recipe makes a trainer follow (a trainer that ignores one ends elsewhere
#: than the oracle): the optimiser of `--optimizer`, the cosine lr, L2 by role, label smoothing 0.1 (the loss),
#: the EMA rule (decay 0.9 with the num_updates warm-up, which sets every step's decay in a short run), the BN
#: statistics groups (one per process: their layout over `--nproc` processes and `--devices` devices) and the
#: augmentation; 'clipped-frozen-bn' then the clip and frozen BN instead of the groups
_COMMON_FIELDS = ("optimizer", "learning_rate", "weight_decay.rate", "weight_decay.applies_to", "label_smoothing",
                  "ema.decay", "ema.num_updates_warmup", "randaugment_layers", "augmentation")
RECIPE_FIELDS = {"default": _COMMON_FIELDS + ("batch_norm.group_size", "batch_norm.running_stats"),
                 "clipped-frozen-bn": _COMMON_FIELDS + ("gradient_clip_norm", "batch_norm.mode",
                                                        "batch_norm.freeze_affine")}

def check_schedule(steps: int, size: int) -> dict:
    """Two stages, size - 8 -> size, every regulariser raised in the second stage."""
    return {"kind": "progressive_schedule", "name": "train-check", "convention": "paper", "total_steps": steps,
            "num_stages": 2, "image_size": {"start": max(size - 8, 8), "end": size, "multiple": 8},
            "regularizers": {"randaugment_magnitude": {"start": 5, "end": 12},
                             "mixup_alpha": {"start": 0.2, "end": 0.4}, "cutmix_alpha": {"start": 0.0, "end": 1.0},
                             "dropout": {"start": 0.1, "end": 0.3},
                             "drop_path_rate": {"start": 0.1, "end": 0.2}}}


#: the check's optimiser per `--optimizer` name. AdamW's eps is 1e-5, not 1e-8: Adam turns a gradient element below
#: eps into g / eps, so the last-bit differences of two correct float64 trainers grow by lr / eps (to 1e-8 at 1e-8)
OPTIMIZERS = {"rmsprop": {"type": "rmsprop"}, "sgd": {"type": "sgd", "momentum": 0.9, "nesterov": True},
              "adamw": {"type": "adamw", "weight_decay": 0.05, "eps": 1e-5}}


def check_training(optimizer: str, batch: int, group_size: int | None, mix_group_size: int | None = None,
                   recipe: str = "default") -> dict:
    """The check's training document; `optimizer` one of OPTIMIZERS, `recipe` one of RECIPES."""
    opt = dict(OPTIMIZERS[optimizer])
    doc = _check_training(opt, optimizer, batch, group_size, mix_group_size)
    for key, value in RECIPES[recipe].items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) else value
    return doc


def _check_training(opt: dict, optimizer: str, batch: int, group_size: int | None,
                    mix_group_size: int | None) -> dict:
    return {"kind": "training", "name": f"train-check-{optimizer}", "batch_size": batch, "optimizer": opt,
            "label_smoothing": 0.1, "ema": {"decay": 0.9},
            "learning_rate": {"base": 0.2, "reference_batch_size": 256, "warmup_epochs": 0.0,
                              "decay": {"type": "cosine"}},
            "weight_decay": {"rate": 1e-4}, "batch_norm": {"group_size": group_size},
            "augmentation": {"randaugment": "automl", "random_resized_crop": {"area": [0.3, 1.0]},
                             "horizontal_flip": True, "mix_group_size": mix_group_size}}


@dataclass
class PartReport:
    part: str
    worst_name: str
    worst: float
    tensors: int


@dataclass
class TrainCheckReport:
    framework: str
    processes: int
    dtype: str
    tolerance: float
    parts: list[PartReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    devices: int = 1
    recipe: str = "default"

    @property
    def passed(self) -> bool:
        return not self.problems and all(p.worst <= self.tolerance for p in self.parts)

    def to_json(self) -> dict:
        return {"framework": self.framework, "processes": self.processes, "devices": self.devices, "dtype": self.dtype,
                "recipe": self.recipe, "recipe_fields": list(RECIPE_FIELDS[self.recipe]),
                "tolerance": self.tolerance, "passed": self.passed, "problems": self.problems,
                "parts": [p.__dict__ for p in self.parts]}

    def recipe_problem(self) -> str | None:
        """When a state differs: one line naming the recipe's fields, one of which the trainer does not follow."""
        differ = [p.part for p in self.parts if not p.worst <= self.tolerance]
        if not differ:
            return None
        return (f"{', '.join(differ)}: the {self.framework} trainer ends elsewhere than the oracle; it does not "
                f"follow a field of recipe '{self.recipe}': {', '.join(RECIPE_FIELDS[self.recipe])}")


def compare_states(reference: dict[str, dict], other: dict[str, dict], dtype: str) -> tuple[list, list[str]]:
    """Per part ('model', 'optimizer', 'ema'): the worst error; plus missing/extra tensor problems."""
    parts, problems = [], []
    for part in ("model", "optimizer", "ema"):
        a, b = reference[part], other[part]
        if set(a) != set(b):
            diff = sorted(set(a) ^ set(b))
            problems.append(f"{part}: tensors differ ({', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''})")
            continue
        floats = {k: np.asarray(v, dtype=np.float64) for k, v in a.items() if k != "steps"}
        floors = gradient_scales({_param_of(k): v for k, v in floats.items()}, dtype)
        worst_name, worst = "", 0.0
        for k, ref in floats.items():
            got = np.asarray(b[k], dtype=np.float64)
            if got.shape != ref.shape or not np.isfinite(got).all():
                worst_name, worst = k, float("inf")
                break
            scale = max(float(np.abs(ref).max()) if ref.size else 0.0, floors.get(_param_of(k), 0.0))
            err = float(np.abs(got - ref).max()) / scale if scale > 0 else float(np.abs(got - ref).max())
            if err > worst:
                worst_name, worst = k, err
        if "steps" in a and int(np.asarray(a["steps"])) != int(np.asarray(b["steps"])):
            steps = int(np.asarray(a["steps"])), int(np.asarray(b["steps"]))
            problems.append(f"{part}: step counts differ ({steps[0]} vs {steps[1]})")
        parts.append(PartReport(part, worst_name, worst, len(floats)))
    return parts, problems


def _param_of(key: str) -> str:
    """'mom/blocks.1.project.bn.bias' -> 'blocks.1.project.bn.bias' (slots share their tensor's unit)."""
    return key.partition("/")[2] if "/" in key else key


def _state_of(checkpoint_path: Path) -> dict[str, dict]:
    from effv2_train.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint_path)
    return {"model": ck.model, "optimizer": ck.optimizer, "ema": ck.ema, "meta": ck.meta}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, args: list[str], port: int | None = None) -> list[str]:
    """`torchrun --nproc_per_node N` of `effv2 <args>` on 127.0.0.1 (one machine)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={port or free_port()}",
            "-m", "effv2_cli", *args]


def local_process_env() -> dict:
    """Environment for processes that talk over loopback only (gloo binds to the 'lo' interface)."""
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def jax_process_commands(nproc: int, args: list[str], port: int | None = None,
                         timeout_s: float = 120.0) -> list[list[str]]:
    """One `effv2 <args> --coordinator 127.0.0.1:PORT --num-processes N --process-id i` per process."""
    port = port or free_port()
    return [[sys.executable, "-m", "effv2_cli", *args, "--coordinator", f"127.0.0.1:{port}",
             "--num-processes", str(nproc), "--process-id", str(i), "--timeout", str(timeout_s)] for i in range(nproc)]


def jax_device_env(devices: int) -> dict:
    """`local_process_env()` with `devices` simulated CPU devices for jax (XLA_FLAGS)."""
    env = local_process_env()
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f)
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    return env


def run_train_check(spec: ArchitectureSpec, *, framework: str = "torch", steps: int = 6, nproc: int = 1,
                    dtype: str = "float64", optimizer: str = "rmsprop", size: int = 24, batch: int = 16,
                    group_size: int | None = None, seed: int = 0, timeout_s: float = 600.0,
                    workdir: str | os.PathLike | None = None, devices: int = 1,
                    recipe: str = "default") -> TrainCheckReport:
    """Train `spec` `steps` steps with the oracle and with `framework` (`nproc` processes; jax: `devices`
    simulated CPU devices per process) by the check's `recipe` (RECIPES) and compare."""
    _check_can_train(framework, nproc)
    if recipe not in RECIPES:
        raise ValueError(f"--recipe: one of {', '.join(RECIPES)} (got {recipe!r})")
    if devices != 1 and framework != "jax":
        raise ValueError("--devices: simulated devices are a jax check (torch runs one device per process)")
    if batch % (nproc * devices):
        raise ValueError(f"--nproc {nproc} x --devices {devices}: must divide the check's batch of {batch}")
    group = group_size or batch // nproc  # each process's rows (DDP's groups); with devices, a group spans them
    report = TrainCheckReport(framework, nproc, dtype, TOLERANCE[dtype], devices=devices, recipe=recipe)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        docs = {"spec.json": json.loads(spec.model_dump_json()), "schedule.json": check_schedule(steps, size),
                "training.json": check_training(optimizer, batch, group, batch // nproc, recipe)}
        for name, doc in docs.items():
            parse_obj(doc)  # a bad combination (e.g. the group) fails here, before any run
            (root / name).write_text(json.dumps(doc))
        data = _check_data(root / "data.npz", batch, size)
        common = [str(root / "spec.json"), "--schedule", str(root / "schedule.json"), "--training",
                  str(root / "training.json"), "--data", str(data), "--dtype", dtype, "--seed", str(seed),
                  "--checkpoint-every", "0"]
        _run_cli(["train", *common, "--out", str(root / "oracle")], timeout_s, root)
        other = ["train", *common, "--framework", framework, "--out", str(root / "candidate")]
        if framework in ("torch", "jax"):
            other += ["--device", "cpu"]
        if framework == "jax":
            env = jax_device_env(devices)
            env["EFFV2_JAX_CACHE"] = env.get("EFFV2_JAX_CACHE", str(root / "jax-cache"))
            if nproc == 1:
                _run([sys.executable, "-m", "effv2_cli", *other], timeout_s, root, env)
            else:
                _run_all(jax_process_commands(nproc, other, timeout_s=min(timeout_s, 120.0)), timeout_s, root, env)
        elif nproc == 1:
            _run_cli(other, timeout_s, root)
        else:
            _run(torchrun_command(nproc, other + ["--timeout", str(min(timeout_s, 120.0))]), timeout_s, root)
        ref, got = _state_of(root / "oracle" / "checkpoint.npz"), _state_of(root / "candidate" / "checkpoint.npz")
        report.parts, report.problems = compare_states(ref, got, dtype)
        report.problems += [line for line in [report.recipe_problem()] if line]
        if got["meta"].get("processes") != nproc:
            report.problems.append(f"the {framework} run used {got['meta'].get('processes')} processes, not {nproc}")
    return report


def _check_can_train(framework: str, nproc: int) -> None:
    """A framework whose adapter (built-in, installed or "module:Class", found as `effv2 check` finds it) has the
    `trainer` capability."""
    from .conformance import CheckError, get_framework

    if framework == "reference":
        raise ValueError("--train-steps: the oracle is the reference the trainers are checked against")
    try:
        adapter = get_framework(framework)
    except CheckError as exc:
        raise ValueError(f"--train-steps: {exc}") from None
    if not callable(getattr(adapter, "trainer", None)):
        raise ValueError(f"--train-steps: the {framework!r} adapter has no `trainer` capability")
    if nproc != 1 and framework not in ("torch", "jax"):
        raise ValueError(f"--nproc {nproc}: several processes are checked for torch (torchrun) and jax only")


def _check_data(path: Path, batch: int, size: int) -> Path:
    """Two batches' worth (plus the held-out fifth) of the embedded digits, stored at `size`."""
    from effv2_train.data import load_digits

    digits = load_digits(size)
    n = (2 * batch * 5 + 3) // 4 + 10
    np.savez(path, images=digits.images[:n], labels=digits.labels[:n])
    return path


def _run_cli(args: list[str], timeout_s: float, root: Path) -> None:
    _run([sys.executable, "-m", "effv2_cli", *args], timeout_s, root)


def _tied(cmd: list[str], root: Path) -> list[str]:
    """`cmd` stopped (SIGTERM: torchrun passes it to its ranks) and `root` removed if this check dies, even by
    SIGKILL."""
    return tied_to_parent(cmd, cleanup=root)


def _child_env(env: dict | None, root: Path) -> dict:
    """The runs' temporary files (torchrun's torchelastic_* folders) go inside the check's folder too."""
    return dict(env or local_process_env(), TMPDIR=str(root))


def _run_all(cmds: list[list[str]], timeout_s: float, root: Path, env: dict) -> None:
    """Start every command at once (the processes of one run), wait for all; the first failure is one line."""
    import time

    procs = [subprocess.Popen(_tied(c, root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_child_env(env, root)) for c in cmds]
    deadline = time.monotonic() + timeout_s
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"training check: {len(cmds)} processes did not finish in {timeout_s:.0f} s") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for code, out, err in outputs:
        if code != 0:
            lines = [ln for ln in (err + out).splitlines() if ln.strip()] or ["no output"]
            raise RuntimeError(f"training check: a run failed (exit {code}): {lines[0]}")


def _run(cmd: list[str], timeout_s: float, root: Path, env: dict | None = None) -> None:
    try:
        done = subprocess.run(_tied(cmd, root), capture_output=True, text=True, timeout=timeout_s,
                              env=_child_env(env, root))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"training check: '{' '.join(cmd[-12:])}' did not finish in {timeout_s:.0f} s") from None
    if done.returncode != 0:
        # the runs print one line on bad input; under torchrun the launcher's report follows it
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()] or ["no output"]
        raise RuntimeError(f"training check: a run failed (exit {done.returncode}): {lines[0]}")
