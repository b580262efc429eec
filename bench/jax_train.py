"""Benchmark: the JAX trainer's step (`JaxBackend.train_step`, what `effv2 train --framework jax` runs)
against a plain jitted Flax NNX step on the same model, batch and optimiser, and the compile seconds
of each stage.

    python bench/jax_train.py [--spec efficientnetv2-nano] [--batch 32] [--sizes 32 64] [--steps 20]
                              [--optimizer rmsprop|sgd] [--dtype float32] [--precision float32|bfloat16] [--json]

Per stage size:
* trainer: `backend.train_step(x, targets, masks, lr=..., step=...)` with NumPy inputs, as the loop
  calls it: host -> device transfer of the rows (`make_array_from_process_local_data`), the compiled
  step (loss, grads, BN groups, L2, clipping, optax, EMA), and the fetch of loss and correct count.
* plain: the textbook step a user would write: `jax.jit` of (params, BN stats, optax state, x, y) ->
  forward in train mode with the same masks, label-smoothed cross-entropy, `jax.grad`, the same optax
  chain (L2 on every tensor, the recipe's optimiser); inputs already on the device; no EMA; one
  `block_until_ready` per step.
* program: the trainer's compiled step alone, its inputs already on the device (trainer - program
  is the host-side cost of a step: conversions, transfers, dispatch, the loss fetch).
overhead = trainer / plain - 1 (median wall times, steps interleaved; overhead_min_pct: of the minima,
steadier on a loaded machine). compile_s is the trainer's
`compile_seconds` for the stage (trace + lower + XLA compile, or a persistent-cache load); the
persistent cache is switched off here (EFFV2_JAX_CACHE=off) so the figure is a cold compile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("EFFV2_JAX_CACHE", "off")

import numpy as np  # noqa: E402


def build(args):
    from effv2_spec.documents import parse_obj
    from effv2_spec.presets import load as load_preset
    from effv2_train.data import load_digits
    from effv2_train.trainloop import ProgressiveLoop
    from effv2_adapters.jax.train import make_jax_backend
    from effv2_adapters.train_check import check_training

    spec = load_preset(args.spec)
    sizes = sorted(args.sizes)
    schedule = {"kind": "progressive_schedule", "name": "bench", "convention": "paper",
                "total_steps": 10 * len(sizes), "num_stages": len(sizes),
                "image_size": {"start": sizes[0], "end": sizes[-1], "multiple": 8},
                "regularizers": {"dropout": {"start": 0.1, "end": 0.3}, "drop_path_rate": {"start": 0.1, "end": 0.2}}}
    if len(sizes) == 1:
        schedule["image_size"]["start"] = sizes[0]
    training = check_training(args.optimizer, args.batch, None)
    digits = load_digits(max(sizes))
    n = 2 * args.batch
    images = np.concatenate([digits.images] * (n // len(digits) + 2))[:n + n // 4]
    labels = np.concatenate([digits.labels] * (n // len(digits) + 2))[:n + n // 4]
    from effv2_train.data.sources import Dataset

    train = Dataset(images[:n], labels[:n] % spec.num_classes, spec.num_classes, "bench")
    held = Dataset(images[n:], labels[n:] % spec.num_classes, spec.num_classes, "bench-held")
    make, _ = make_jax_backend(dtype=args.dtype, device=args.device, precision=args.precision)
    return ProgressiveLoop(spec, parse_obj(schedule), parse_obj(training), train, held, make, seed=0,
                           dtype=args.dtype, checkpoint_every=None)


def plain_step(loop, resolved, args):
    """(jitted step, its arguments on the device) of the textbook step for stage `resolved`."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from effv2_adapters.jax.build import build_model
    from effv2_adapters.jax.optim import make_optimizer

    model = build_model(resolved, args.dtype)
    if args.precision == "bfloat16":
        model.dtype = "bfloat16"  # the input cast: compute in bfloat16 (float32 master weights below)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    config = loop.config
    tx = make_optimizer(config, float(loop.plan.learning_rate(0)))
    opt_state = tx.init(params)
    smoothing = float(config.label_smoothing)
    cdt = jnp.bfloat16 if args.precision == "bfloat16" else jnp.dtype(args.dtype)

    @jax.jit
    def step(params, rest, opt_state, x, y, masks):
        def loss_fn(p):
            if cdt != jnp.dtype(args.dtype):
                p = jax.tree.map(lambda a: a.astype(cdt), p)
            m = nnx.merge(graphdef, p, jax.tree.map(lambda a: a, rest))  # fresh Variables at this trace level
            logits = m(jnp.transpose(x, (0, 2, 3, 1)).astype(cdt), True, masks).astype(jnp.float32)
            t = y * (1 - smoothing) + smoothing / logits.shape[1]
            loss = -jnp.sum(t * jax.nn.log_softmax(logits)) / logits.shape[0]
            return loss, nnx.state(m, nnx.Not(nnx.Param))

        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_rest, opt_state, loss

    return step, model, (params, rest, opt_state)


def _timed(steps: dict, n: int) -> dict:
    """Milliseconds of each callable, `n` times interleaved after three warm-up rounds."""
    for _ in range(3):
        for f in steps.values():
            f()
    wall = {name: [] for name in steps}
    for _ in range(n):
        for name, f in steps.items():
            t = time.perf_counter()
            f()
            wall[name].append((time.perf_counter() - t) * 1000)
    return wall


def _row(args, st, plan, backend, wall: dict, first_trainer: float, first_plain: float) -> dict:
    import jax

    med = {k: statistics.median(v) for k, v in wall.items()}
    return {"spec": args.spec, "size": st.image_size, "batch": plan.batch_size, "dtype": args.dtype,
            "precision": args.precision, "optimizer": args.optimizer,
            "devices": len(backend.procs.devices), "platform": jax.devices()[0].platform,
            "compile_s": round(backend.compile_seconds.get(f"{st.image_size}px", float("nan")), 2),
            "first_step_s": round(first_trainer, 2), "plain_first_step_s": round(first_plain, 2),
            "trainer_ms": round(med["trainer"], 2), "program_ms": round(med["program"], 2),
            "plain_ms": round(med["plain"], 2),
            "trainer_min_ms": round(min(wall["trainer"]), 2), "program_min_ms": round(min(wall["program"]), 2),
            "plain_min_ms": round(min(wall["plain"]), 2),
            "overhead_pct": round(100 * (med["trainer"] / med["plain"] - 1), 1),
            "overhead_min_pct": round(100 * (min(wall["trainer"]) / min(wall["plain"]) - 1), 1),
            "images_per_s": round(plan.batch_size / med["trainer"] * 1000, 1)}


def run(args) -> list[dict]:
    import jax

    loop = build(args)
    backend, plan = loop.backend, loop.plan
    rows = []
    for st in plan.stages:
        resolved = plan.stage_resolved(st)
        backend.set_stage(resolved)
        step = st.start_step
        dtype = np.dtype(args.dtype)
        x, targets = loop.data.batch(step, slice(0, plan.batch_size), resolved, dtype)
        masks = plan.masks(step, slice(0, plan.batch_size), resolved, dtype)
        lr = plan.learning_rate(step)
        t = time.perf_counter()
        backend.train_step(x, targets, masks, lr=lr, step=step)
        first_trainer = time.perf_counter() - t
        fn, _, state = plain_step(loop, resolved, args)
        dev = backend.procs.local_devices[0]
        xd, yd = jax.device_put(x, dev), jax.device_put(targets, dev)
        md = {k: jax.device_put(v, dev) for k, v in masks.items()}
        box = {"state": state}

        def plain():
            params, rest, opt = box["state"]
            params, rest, opt, loss = fn(params, rest, opt, xd, yd, md)
            loss.block_until_ready()
            box["state"] = (params, rest, opt)

        t = time.perf_counter()
        plain()
        first_plain = time.perf_counter() - t

        def trainer():
            backend.train_step(x, targets, masks, lr=lr, step=step)

        # the trainer's compiled step alone: its inputs already on the devices (no host conversions)
        program_fn, xd_, rowdata = backend._step_inputs(x, targets, masks)
        resident = (xd_, rowdata, backend._put(np.asarray(lr, dtype)), backend._put(np.asarray(0.001, dtype)))

        def program():
            b = backend
            b.packed, b.stats, b.opt_state, b.ema, loss, _ = program_fn(b.packed, b.fixed, b.stats, b.other,
                                                                         b.opt_state, b.ema, *resident)
            loss.block_until_ready()

        wall = _timed({"trainer": trainer, "program": program, "plain": plain}, args.steps)
        rows.append(_row(args, st, plan, backend, wall, first_trainer, first_plain))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="efficientnetv2-nano")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--optimizer", choices=["rmsprop", "sgd"], default="rmsprop")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", default=None, help="cpu, gpu or tpu (default: jax's)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = run(args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = ["size", "compile_s", "trainer_ms", "program_ms", "plain_ms", "overhead_pct", "trainer_min_ms",
            "program_min_ms", "plain_min_ms", "overhead_min_pct", "images_per_s", "devices", "platform"]
    print(f"{args.spec}, batch {args.batch}, {args.dtype} ({args.precision} compute), {args.optimizer}, "
          f"median of {args.steps} steps; load average {os.getloadavg()[0]:.2f}")
    print("  ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]!s:>12}" for c in cols))


if __name__ == "__main__":
    sys.exit(main())
