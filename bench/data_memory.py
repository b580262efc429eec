"""Memory of a training run over a large image folder, and the time to index the folder, first and cached.

    python bench/data_memory.py [--files 100000] [--size 64x48] [--classes 10] [--steps 40] [--workers 2]
        [--framework reference|torch|jax] [--folder DIR] [--out data_memory.json [--overwrite]]

Generates `--files` small JPEGs as ROOT/<class>/<n>.jpg (Pillow, random smooth images; reused when --folder
already holds that many), then:
  * indexes it twice in fresh processes with an empty cache (EFFV2_CACHE_DIR in a temporary folder): the
    first run scans every file's header, the second reads the cache (folder_index.build_index);
  * trains `effv2 train efficientnetv2-nano --data ROOT --steps S --workers W --framework F`, sampling every
    0.05 s the resident size of the trainer and of every process below it (/proc/<pid>/status: VmRSS, and
    VmHWM, the kernel's own peak, read until each process ends).
The figures: each process's peak (VmHWM), the largest sum of simultaneous VmRSS samples over all processes,
and the index times. The issue's goal: under 2 GB in all, not growing with the folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from cli_args import at_least
from data_pipeline import write_json

CLI = [sys.executable, "-m", "effv2_cli"]


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT, got {text!r}") from None
    if min(w, h) < 8:
        raise argparse.ArgumentTypeError(f"sides must be >= 8, got {text!r}")
    return w, h


def make_folder(root: Path, files: int, size: tuple[int, int], classes: int) -> float:
    """ROOT/class_k/<n>.jpg, `files` in all; seconds taken. Smooth random images: 16 base images, each file
    one of them shifted and tinted, so that encoding, not drawing, is the cost."""
    from PIL import Image

    t0 = time.perf_counter()
    w, h = size
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (16, max(h // 8, 1), max(w // 8, 1), 3), dtype=np.uint8)
    bases = [np.asarray(Image.fromarray(s).resize((2 * w, 2 * h), Image.BILINEAR)) for s in small]
    for k in range(classes):
        (root / f"class_{k:03d}").mkdir(parents=True, exist_ok=True)
    for n in range(files):
        base = bases[n % 16]
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        img = (base[y:y + h, x:x + w].astype(np.int16) + int(rng.integers(-40, 41))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"class_{n % classes:03d}" / f"{n:07d}.jpg", quality=85)
    return time.perf_counter() - t0


def count_files(root: Path) -> int:
    return sum(1 for d in root.iterdir() if d.is_dir() for _ in d.iterdir()) if root.is_dir() else 0


def index_seconds(root: Path, cache: Path) -> float:
    """Wall seconds of build_index(root) in a fresh process (imports excluded)."""
    code = ("import sys, time; from effv2_train.data.folder_index import build_index; t = time.perf_counter(); "
            "index = build_index(sys.argv[1]); print(time.perf_counter() - t, len(index))")
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True,
                         env=dict(os.environ, EFFV2_CACHE_DIR=str(cache)))
    if out.returncode != 0:
        raise SystemExit(f"data_memory: indexing {root} failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.split()[0])


# ---- resident size of a process tree, from /proc -----------------------------------------------------------
def _status_kib(pid: int) -> dict[str, int]:
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return fields


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(v) for v in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


class TreeSampler:
    """Samples the resident size of `pid` and its descendants in a thread until stopped."""

    def __init__(self, pid: int, every_s: float = 0.05):
        self.pid, self.every_s = pid, every_s
        self.peak_kib: dict[int, int] = {}  # VmHWM per process, last read
        self.names: dict[int, str] = {}
        self.max_sum_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in [self.pid, *_descendants(self.pid)]:
                fields = _status_kib(p)
                if "VmHWM" not in fields:
                    continue
                self.peak_kib[p] = max(self.peak_kib.get(p, 0), fields["VmHWM"])
                total += fields.get("VmRSS", 0)
                if p not in self.names:
                    try:
                        self.names[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
                    except OSError:
                        self.names[p] = "?"
            self.max_sum_kib = max(self.max_sum_kib, total)
            time.sleep(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def train_memory(root: Path, cache: Path, run_dir: Path, steps: int, workers: int, framework: str) -> dict:
    """Train over `root` while sampling the process tree; the processes' peaks in MiB and the run's seconds."""
    cmd = [*CLI, "train", "efficientnetv2-nano", "--data", str(root), "--steps", str(steps), "--workers", str(workers),
           "--checkpoint-every", "0", "--out", str(run_dir), "--framework", framework]
    env = dict(os.environ, EFFV2_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(proc.pid)
    output, _ = proc.communicate()
    sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"data_memory: training failed (exit code {proc.returncode}):\n{output[-2000:]}")
    mib = {p: round(v / 1024, 1) for p, v in sampler.peak_kib.items()}
    parent = mib.pop(proc.pid, 0.0)
    workers_mib = [v for p, v in mib.items() if "loader_worker" in sampler.names.get(p, "")]
    others = {sampler.names[p]: v for p, v in mib.items() if "loader_worker" not in sampler.names.get(p, "")}
    return dict(seconds=time.perf_counter() - t0, parent_peak_mib=parent, worker_peaks_mib=workers_mib,
                other_peaks_mib=others, sum_of_peaks_mib=round(parent + sum(mib.values()), 1),
                max_simultaneous_rss_mib=round(sampler.max_sum_kib / 1024, 1), command=" ".join(cmd[2:]),
                last_lines=output.strip().splitlines()[-3:])


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=at_least(10), default=100_000)
    ap.add_argument("--size", type=parse_size, default=(64, 48), help="WIDTHxHEIGHT of each JPEG")
    ap.add_argument("--classes", type=at_least(2), default=10)
    ap.add_argument("--steps", type=at_least(1), default=40)
    ap.add_argument("--workers", type=at_least(0), default=2)
    ap.add_argument("--framework", choices=("reference", "torch", "jax"), default="reference")
    ap.add_argument("--folder", type=Path, help="generate here (kept; reused when it already holds --files files)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = ap.parse_args()
    if a.out is not None and a.out.exists() and not a.overwrite:
        ap.error(f"--out: {a.out} exists; pass --overwrite to replace it")
    if not sys.platform.startswith("linux"):
        ap.error("reads /proc: Linux only")
    return a


def main() -> None:
    a = parse_args()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="effv2-bench-memory-"))
    try:
        root = a.folder if a.folder is not None else scratch / "images"
        made = None
        if count_files(root) != a.files:
            if root.exists() and any(root.iterdir()):
                raise SystemExit(f"data_memory: --folder {root} holds {count_files(root)} files, not {a.files}; "
                                 "give an empty or new folder")
            made = make_folder(root, a.files, a.size, a.classes)
            print(f"generated {a.files} JPEGs of {a.size[0]}x{a.size[1]} in {made:.1f} s", flush=True)
        cache = scratch / "cache"
        first, cached = index_seconds(root, cache), index_seconds(root, cache)
        print(f"index: first {first:.2f} s, cached {cached:.2f} s", flush=True)
        train = train_memory(root, cache, scratch / "run", a.steps, a.workers, a.framework)
        print(f"train ({a.framework}) {a.steps} steps, {a.workers} workers: {train['seconds']:.1f} s; "
              f"peak RSS (VmHWM) parent {train['parent_peak_mib']} MiB, workers {train['worker_peaks_mib']} MiB, "
              f"others {list(train['other_peaks_mib'].values())} MiB; sum of peaks {train['sum_of_peaks_mib']} MiB; "
              f"largest simultaneous sum {train['max_simultaneous_rss_mib']} MiB", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    after = os.getloadavg()
    print(f"load average after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    if a.out is not None:
        write_json(a.out, dict(files=a.files, size=list(a.size), classes=a.classes, steps=a.steps, workers=a.workers,
                               framework=a.framework,
                               generate_seconds=made, index_first_seconds=first, index_cached_seconds=cached,
                               train=train, load_before=load, load_after=after))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
