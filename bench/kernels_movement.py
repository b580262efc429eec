"""Micro-benchmark: the oracle's data-movement kernels (im2col / col2im, CNHW <-> padded NHWC) on the
shapes of the default training run (efficientnetv2-nano, batch 64, 16/24/32 px), float32, one thread.

    python bench/kernels_movement.py [--baseline REV] [--repeats 200] [--batch 64] [--sizes 16 24 32] [--json]

Reported per kernel and shape: the median wall time of one call (microseconds) over `--repeats` calls and
ns per value moved (im2col: values of the column matrix written; col2im: values of it read; layout: values
of the output written). `--baseline REV` loads the kernels' modules as they are in git revision REV
(`git show REV:reference/kernels/...`, compiled in a temporary directory, nothing kept) and times both
versions call by call, alternating, so that a load change on a shared machine hits both alike; it also
checks that both give bit-identical outputs. A total per size sums the rows times their calls per step
(what one training step spends in these kernels).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = {"im2col": "reference/kernels/im2col.py", "layout": "reference/kernels/layout.py"}


def shapes(batch: int, size: int):
    """(kernel, x shape (C, N, H, W), params, calls per step) of the nano step at `size` px, as logged from
    `ReferenceModel` (ops/conv.py's calls): the dense 3x3 convs (stem 3 ch at size px / 2, then 16 ch at
    size/2 px, stride 1 and 2) and the layout changes around the depthwise convs (forward: x padded by TF-SAME
    in, y out; backward: dy in, dx cropped out)."""
    s2, s4, s8 = size // 2, size // 4, size // 8
    out = []
    for c, h, st in [(3, size, 2), (16, s2, 1), (16, s2, 2)]:
        t, b = (1, 1) if st == 1 else (0, 1)  # TF-SAME on even sizes
        ho = (h + t + b - 3) // st + 1
        out.append(("im2col", (c, batch, h, h), (3, st, t, t, ho, ho), 1))
        out.append(("col2im", (c, batch, h, h), (3, st, t, t, ho, ho), 1))
    # (C, H, top/left pad, bottom/right pad, calls per step)
    for c, h, t, b, count in [(96, s4, 0, 1, 1), (160, s8, 1, 1, 2), (96, s8, 0, 0, 1), (160, s8, 0, 0, 2)]:
        out.append(("to_nhwc", (c, batch, h, h), (t, b), count))
        out.append(("to_cnhw", (c, batch, h, h), (t, b), count))
    return out


def load_modules(rev: str | None):
    """The kernel modules of revision `rev` (compiled from a temporary copy), or the working tree's."""
    if rev is None:
        from effv2_reference.kernels.network import im2col, layout
        return {"im2col": im2col, "layout": layout}
    tmp = tempfile.mkdtemp(prefix="kmove_")
    mods = {}
    for name, path in FILES.items():
        src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True)
        fn = os.path.join(tmp, f"base_{name}.py")
        with open(fn, "w") as f:
            f.write(src.stdout)
        spec = importlib.util.spec_from_file_location(f"base_{name}", fn)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods[name] = mod
    return mods


def make_call(mods, kind, xshape, params, rng):
    """A no-argument callable running one kernel call on fresh buffers, its output array and the values moved."""
    c, n, h, w = xshape
    if kind in ("im2col", "col2im"):
        k, st, t, l, ho, wo = params
        if kind == "im2col":
            x = rng.standard_normal(xshape).astype(np.float32)
            cols = np.empty((c * k * k, n * ho * wo), np.float32)
            f = mods["im2col"].im2col_pad_kernel
            return (lambda: f(x, k, st, t, l, ho, wo, cols)), cols, cols.size
        dcols = rng.standard_normal((c * k * k, n * ho * wo)).astype(np.float32)
        dx = np.empty(xshape, np.float32)
        f = mods["im2col"].col2im_crop_kernel
        return (lambda: f(dx, k, st, t, l, ho, wo, dcols)), dx, dcols.size
    t, b = params
    if kind == "to_nhwc":
        x = rng.standard_normal(xshape).astype(np.float32)
        out = np.empty((n, h + t + b, w + t + b, c), np.float32)
        f = mods["layout"].cnhw_to_nhwc_pad_kernel
        return (lambda: f(x, out, t, t, 0, c)), out, out.size
    xp = rng.standard_normal((n, h + t + b, w + t + b, c)).astype(np.float32)
    out = np.empty(xshape, np.float32)
    f = mods["layout"].nhwc_crop_to_cnhw_kernel
    return (lambda: f(xp, out, t, t, 0, c)), out, out.size


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(args):
    from effv2_reference.kernels.runtime.pool import set_num_threads
    set_num_threads(1)
    cur = load_modules(None)
    base = load_modules(args.baseline) if args.baseline else None
    rows = []
    for size in args.sizes:
        for kind, xshape, params, count in shapes(args.batch, size):
            new_fn, new_out, moved = make_call(cur, kind, xshape, params, np.random.default_rng(0))
            sides = [("new", new_fn)]
            if base is not None:
                old_fn, old_out, _ = make_call(base, kind, xshape, params, np.random.default_rng(0))
                sides = [("old", old_fn), ("new", new_fn)]
            for _, fn in sides:
                for _ in range(3):
                    fn()
            if base is not None and not np.array_equal(old_out.view(np.uint32), new_out.view(np.uint32)):
                raise SystemExit(f"{kind} {xshape} {params}: outputs differ between {args.baseline} and the tree")
            times = {name: [] for name, _ in sides}
            for r in range(args.repeats):
                order = sides if r % 2 == 0 else sides[::-1]
                for name, fn in order:
                    times[name].append(_time(fn))
            row = {"size": size, "kernel": kind, "x": list(xshape), "params": list(params), "values": moved,
                   "calls_per_step": count}
            for name, ts in times.items():
                med = statistics.median(ts)
                row[f"{name}_us"] = med * 1e6
                row[f"{name}_ns_per_value"] = med * 1e9 / moved
            if base is not None:
                row["speedup"] = row["old_us"] / row["new_us"]
            rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=None, help="git revision to compare with (e.g. HEAD)")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = run(args)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    sides = ["old", "new"] if args.baseline else ["new"]
    head = f"{'px':>3} {'kernel':8} {'x (C,N,H,W)':16} {'params':20} {'values':>8} {'x/step':>6}"
    for s in sides:
        head += f" {s + ' us':>9} {s + ' ns/v':>9}"
    if args.baseline:
        head += f" {'speedup':>7}"
    print(head)
    totals = {}
    for r in rows:
        line = (f"{r['size']:>3} {r['kernel']:8} {str(tuple(r['x'])):16} {str(tuple(r['params'])):20} "
                f"{r['values']:>8} {r['calls_per_step']:>6}")
        for s in sides:
            line += f" {r[s + '_us']:9.1f} {r[s + '_ns_per_value']:9.3f}"
            totals[(r["size"], s)] = totals.get((r["size"], s), 0.0) + r[s + "_us"] * r["calls_per_step"]
        if args.baseline:
            line += f" {r['speedup']:7.2f}"
        print(line)
    for size in args.sizes:
        line = f"{size:>3} per step (rows x calls per step):"
        for s in sides:
            line += f" {s} {totals[(size, s)]:.1f} us"
        if args.baseline:
            line += f", speedup {totals[(size, 'old')] / totals[(size, 'new')]:.2f}"
        print(line)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
