"""GPU figures for the PyTorch trainer, in one prepared run (bench/gpu.sh calls it on CUDA).

    python bench/gpu.py [--device cuda] [--spec efficientnetv2-s] [--check-size 64] [--size 224]
                        [--batch 64] [--steps 20] [--json]

1. Conformance on the device: the float64 oracle vs the torch model on the device, same canonical
   weights and input: eval logits, train-mode logits (the oracle's masks) and every gradient, in
   float32 (tolerances 1e-4 logits, 1e-3 gradients, relative to each tensor's max) and under
   bfloat16 autocast (tolerances 5e-2 logits, 2.5e-1 gradients: an 8-bit mantissa through the
   network; see TOL).
2. Training throughput at --size: images/s of `TorchBackend.train_step` (bfloat16 autocast,
   channels-last; eager and torch.compile) against timm's tf_efficientnetv2_s in the same plain
   loop (same batch, bfloat16, channels-last, SGD), interleaved. Target: >= 0.95 x timm.

Run `--device cpu --size 64 --batch 4 --steps 2 --check-size 32 --no-compile` to try the script
without a GPU (figures then mean nothing).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

#: (logits, gradients); bfloat16 keeps 8 mantissa bits (relative step 2^-8 = 3.9e-3) and the error grows
#: through the network; a CPU dry run (nano, 32 px) measured 1.5e-2 logits, 1.2e-1 gradients
TOL = {"float32": (1e-4, 1e-3), "bfloat16": (5e-2, 2.5e-1)}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def conformance(spec_name: str, size: int, device: str) -> list[dict]:
    import torch

    from effv2_spec.presets import load
    from effv2_spec.resolve import resolve
    from effv2_reference.model import ReferenceModel
    from effv2_adapters.conformance.numerics import gradient_scales
    from effv2_adapters.torch.build import build_model

    resolved = resolve(load(spec_name))
    oracle = ReferenceModel(resolved, "float64", seed=0)
    tensors = oracle.state_dict()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, size, size))
    dlogits = rng.standard_normal((4, resolved.num_classes)) / 4
    eval_ref = oracle.forward(x, training=False)
    train_ref = oracle.forward(x, training=True)
    masks = oracle.last_masks
    grads_ref = oracle.backward(dlogits)
    floors = gradient_scales(grads_ref, "float32")
    rows = []
    for precision in ("float32", "bfloat16"):
        net = build_model(resolved, torch.float32, init=False)
        net.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in tensors.items()})
        net.to(device)
        xt = torch.from_numpy(x.astype(np.float32)).to(device)
        auto = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if precision == "bfloat16"
                else torch.autocast(torch.device(device).type, enabled=False))
        with torch.no_grad(), auto:
            eval_got = net.eval()(xt).float().cpu().numpy()
        net.train()
        with auto:
            logits = net(xt, {k: torch.from_numpy(v.astype(np.float32)).to(device) for k, v in masks.items()})
        (logits.float() * torch.from_numpy(dlogits.astype(np.float32)).to(device)).sum().backward()
        grad_err = max(float(np.abs(p.grad.float().cpu().numpy() - grads_ref[n]).max()
                             / max(np.abs(grads_ref[n]).max(), floors[n], 1e-30))
                       for n, p in net.named_parameters())
        t_logit, t_grad = TOL[precision]
        errs = {"eval_logits": rel(eval_got, eval_ref), "train_logits": rel(logits.detach().float().cpu(), train_ref),
                "gradients": grad_err}
        rows.append({"precision": precision, **errs,
                     "passed": (errs["eval_logits"] <= t_logit and errs["train_logits"] <= t_logit
                                and grad_err <= t_grad),
                     "tolerance_logits": t_logit, "tolerance_gradients": t_grad})
    return rows


def throughput(spec_name: str, size: int, batch: int, steps: int, device: str, compile_too: bool = True) -> dict:
    import torch

    from effv2_spec.documents import parse_obj
    from effv2_spec.presets import load
    from effv2_train.init import initial_tensors
    from effv2_train.plan import TrainingPlan
    from effv2_adapters.torch.train import Processes, TorchBackend

    spec = load(spec_name)
    sched = parse_obj({"kind": "progressive_schedule", "name": "g", "convention": "paper", "total_steps": 10,
                       "num_stages": 1, "image_size": {"start": size, "end": size}})
    config = parse_obj({"kind": "training", "name": "g", "batch_size": batch, "ema": None,
                        "optimizer": {"type": "sgd", "momentum": 0.9}})
    plan = TrainingPlan(spec, sched, config, batch, seed=0)
    tensors = initial_tensors(plan.base, 0, "float32")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    labels = rng.integers(0, spec.num_classes, batch)
    targets = np.eye(spec.num_classes, dtype=np.float32)[labels]
    resolved = plan.stage_resolved(plan.stage_at(0))
    masks = plan.masks(0, slice(0, batch), resolved)
    procs = Processes(device=torch.device(device))

    def timed(step) -> float:
        for _ in range(3):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return batch * steps / (time.perf_counter() - t)

    out = {}
    for compiled in ((False, True) if compile_too else (False,)):
        backend = TorchBackend(plan, tensors, procs=procs, precision="bfloat16", channels_last=True, compile=compiled)
        backend.set_stage(resolved)
        out[f"effv2{'_compiled' if compiled else ''}"] = timed(
            lambda: backend.train_step(x, targets, masks, lr=0.01, step=0))
    out.update(timm_throughput(x, labels, device, timed, compile_too))
    out["ratio"] = out["effv2"] / out["timm"]
    if compile_too:
        out["ratio_compiled"] = out["effv2_compiled"] / out["timm_compiled"]
    return out


def timm_throughput(x: np.ndarray, labels: np.ndarray, device: str, timed, compile_too: bool) -> dict:
    """timm's tf_efficientnetv2_s in a plain loop on the same batch: bfloat16 autocast, channels-last, SGD."""
    import timm
    import torch
    import torch.nn.functional as F

    peer = timm.create_model("tf_efficientnetv2_s", pretrained=False).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(peer.parameters(), lr=0.01, momentum=0.9)
    xt = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
    yt = torch.from_numpy(labels).to(device)

    def peer_step(net):
        net.train()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = F.cross_entropy(net(xt).float(), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out = {"timm": timed(lambda: peer_step(peer))}
    if compile_too:
        compiled_peer = torch.compile(peer)
        out["timm_compiled"] = timed(lambda: peer_step(compiled_peer))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--spec", default="efficientnetv2-s")
    ap.add_argument("--check-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true", help="Skip the torch.compile rows (e.g. a CPU dry run).")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import torch

    device_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    result = {"device": device_name, "torch": torch.__version__, "spec": a.spec,
              "conformance": conformance(a.spec, a.check_size, a.device),
              "throughput": throughput(a.spec, a.size, a.batch, a.steps, a.device, not a.no_compile),
              "size": a.size, "batch": a.batch}
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{device_name}, torch {torch.__version__}, {a.spec}")
    for r in result["conformance"]:
        print(f"  {r['precision']:<9} eval {r['eval_logits']:.1e}  train {r['train_logits']:.1e}  grads "
              f"{r['gradients']:.1e}  {'ok' if r['passed'] else 'FAIL'}")
    t = result["throughput"]
    compiled = (f"; compiled: effv2 {t['effv2_compiled']:.0f}, timm {t['timm_compiled']:.0f}, ratio "
                f"{t['ratio_compiled']:.2f}" if "ratio_compiled" in t else "")
    print(f"  train images/s at {a.size}, batch {a.batch}, bfloat16, channels-last: effv2 {t['effv2']:.0f}, "
          f"timm {t['timm']:.0f}, ratio {t['ratio']:.2f}{compiled}")


if __name__ == "__main__":
    main()
