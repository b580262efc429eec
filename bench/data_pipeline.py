"""Images per second of the training data pipeline, effv2's against timm's, on the same JPEGs in the same run.

    OMP_NUM_THREADS=1 python bench/data_pipeline.py [--sizes 128 224 300] [--workers 1 2] [--runs 3]
        [--images 48] [--repeat 4] [--rows 16] [--out data_pipeline.json [--overwrite]]

`--images` JPEGs of 500 x 375 are cut from scikit-learn's two sample photos (china.jpg, flower.jpg) into a
temporary folder. Each method runs in its own processes (one thread each, freed memory kept in the heap as
effv2's loader workers keep it; `--workers N`: N processes on the same files at once, the figure is their
aggregate), over every file `--repeat` times per measurement:
  decode             Pillow open + convert('RGB'): the ceiling of any pipeline that decodes whole files
  timm               Pillow decode + timm create_transform(size, is_training=True, auto_augment='rand-m15-n2')
                     (random-resized crop, flip, RandAugment M15 x 2, ToTensor, Normalize)
  effv2-numpy        the oracle's pipeline as the trainers run it per row range (`--rows` per call): the crop box
                     drawn on the original's size (sample_crop_box), the whole file decoded (data/decode.py), the
                     box resized (TF bilinear, truncated), flip + automl RandAugment M15 x 2, then
                     pipeline.normalise (float32 NCHW, as V2-S is fed); a process without Numba
                     (EFFV2_DATA_KERNELS=numpy): the NumPy ops
  effv2-numba        the same with Numba loaded: the resize and RandAugment kernels (the same bits)
  effv2-*-draft      the same, the file decoded at the largest JPEG DCT reduction the box allows (Pillow draft,
                     data/decode.py:decode_region)
Every measurement is preceded, in each process, by a warm-up over 8 files at that size. Two figures per
measurement: the aggregate images per wall second, and images per CPU second (the files over the CPU time
of the processes: one core's throughput, which other load on a shared machine disturbs far less than the
wall time). The tables give the median over the runs and the range; ratios are effv2 / timm per run
(median, range). The issue's goal: >= 1.0 at 224 and 300 px, >= 1.5 at 128 px.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cli_args import at_least

METHODS = ("decode", "timm", "effv2-numpy", "effv2-numba", "effv2-numpy-draft", "effv2-numba-draft")
EFFV2 = tuple(m for m in METHODS if m.startswith("effv2"))
SIDE_W, SIDE_H = 500, 375
WARMUP_FILES = 8


# ---- the files ------------------------------------------------------------------------------------------
def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` 500 x 375 JPEGs (quality 90) cut at random places from the two sample photos, some mirrored."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y = int(rng.integers(0, photo.shape[0] - SIDE_H + 1))
        x = int(rng.integers(0, photo.shape[1] - SIDE_W + 1))
        cut = photo[y:y + SIDE_H, x:x + SIDE_W]
        if rng.random() < 0.5:
            cut = cut[:, ::-1]
        path = folder / f"img_{i:04d}.jpg"
        Image.fromarray(np.ascontiguousarray(cut)).save(path, quality=90)
        paths.append(str(path))
    return paths


# ---- one method, in a child process ---------------------------------------------------------------------
class Effv2:
    """prepare_rows' per-row work on files: box on the original's size, decode (whole or draft), resize, then
    flip + RandAugment of the row range in one call, normalised."""

    def __init__(self, paths: list[str], draft: bool):
        from effv2_spec.training import Augmentation
        from effv2_train.data import decode, pipeline
        from effv2_train.data.crop import resize_to_uint8, sample_crop_box

        self.decode, self.pipeline, self.resize, self.box = decode, pipeline, resize_to_uint8, sample_crop_box
        self.augmentation, self.draft = Augmentation(), draft  # automl RandAugment, absolute pixels; crop; flip
        from effv2_spec.presets import load
        from effv2_spec.resolve import resolve

        self.sizes = [decode.stored_size(p) for p in paths]  # the index's job in training: not timed
        self.resolved = resolve(load("efficientnetv2-s"))  # normalised outside the model: pipeline.normalise
        self.count = 0

    def crop(self, path: str, hw, size: int, rng) -> np.ndarray:
        area, aspect = self.augmentation.random_resized_crop.area, self.augmentation.random_resized_crop.aspect
        box = self.box(hw[0], hw[1], rng, area=area, aspect=aspect)
        if self.draft:
            region = self.decode.decode_region(path, box, size, 3)
        else:
            y, x, h, w = box
            region = self.decode.decode_image(path, 3)[y:y + h, x:x + w]
        return self.resize(region, size)

    def run(self, paths: list[str], size: int, rows: int) -> None:
        for lo in range(0, len(paths), rows):
            n = min(rows, len(paths) - lo)
            rngs = [np.random.default_rng((7, self.count + k)) for k in range(n)]
            crops = np.stack([self.crop(paths[lo + i], self.sizes[lo + i], size, rng) for i, rng in enumerate(rngs)])
            images = self.pipeline._flip_and_augment_rows(crops, rngs, augmentation=self.augmentation,
                                                          randaugment_layers=2, magnitude=15.0)
            self.pipeline.normalise(images, self.resolved)
            self.count += len(rngs)


class Timm:
    def __init__(self, paths: list[str]):
        import torch
        from timm.data import create_transform

        torch.set_num_threads(1)
        self.create, self.transforms = create_transform, {}

    def run(self, paths: list[str], size: int, rows: int) -> None:
        from PIL import Image

        if size not in self.transforms:
            self.transforms[size] = self.create(size, is_training=True, auto_augment="rand-m15-n2")
        transform = self.transforms[size]
        for p in paths:
            with Image.open(p) as im:
                _ = transform(im.convert("RGB"))


class Decode:
    def __init__(self, paths: list[str]):
        pass

    def run(self, paths: list[str], size: int, rows: int) -> None:
        from PIL import Image

        for p in paths:
            with Image.open(p) as im:
                im.convert("RGB")


def make_method(method: str, paths: list[str]):
    if method == "decode":
        return Decode(paths)
    if method == "timm":
        return Timm(paths)
    if "numba" in method:
        import numba  # noqa: F401 - the pipeline takes its kernels once Numba is loaded
    return Effv2(paths, draft=method.endswith("-draft"))


def child(method: str, folder: str, rows: int) -> None:
    """Answers 'size repeat' lines on stdin with 'wall-seconds cpu-seconds' lines; warm-up per new size, not timed."""
    from effv2_reference.kernels.runtime.heap import retain_freed_memory

    retain_freed_memory()  # as effv2's loader workers do; timm's and Pillow's figures do not move with it
    paths = sorted(str(p) for p in Path(folder).glob("*.jpg"))
    runner = make_method(method, paths)
    warmed: set[int] = set()
    print(f"ready numba={'numba' in sys.modules}", flush=True)
    for line in sys.stdin:
        size, repeat = (int(v) for v in line.split())
        if size not in warmed:
            runner.run(paths[:WARMUP_FILES], size, rows)
            warmed.add(size)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            runner.run(paths, size, rows)
        print(f"{time.perf_counter() - t0:.6f} {time.process_time() - c0:.6f}", flush=True)


# ---- the parent -----------------------------------------------------------------------------------------
class Pool:
    """`workers` child processes of one method, started once, measured together."""

    def __init__(self, method: str, folder: str, workers: int, rows: int):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        if method.startswith("effv2-numpy"):
            env["EFFV2_DATA_KERNELS"] = "numpy"
        self.method = method
        self.procs = [subprocess.Popen([sys.executable, __file__, "--child", method, folder, str(rows)], env=env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                      for _ in range(workers)]
        for proc in self.procs:
            ready = proc.stdout.readline().strip()
            if not ready.startswith("ready"):
                raise SystemExit(f"data_pipeline: the {method} process did not start (exit code {proc.wait()})")
            if method.startswith("effv2") and ready != f"ready numba={'numba' in method}":
                raise SystemExit(f"data_pipeline: the {method} process has the wrong Numba state ({ready})")

    def measure(self, size: int, repeat: int) -> tuple[float, float]:
        """(seconds until the slowest process has done its `repeat` passes (all start together), CPU seconds
        of all the processes)."""
        for proc in self.procs:
            proc.stdin.write(f"{size} {repeat}\n")
            proc.stdin.flush()
        answers = [proc.stdout.readline().strip() for proc in self.procs]
        if not all(answers):
            raise SystemExit(f"data_pipeline: a {self.method} process failed at {size} px (its error is above)")
        times = [[float(v) for v in answer.split()] for answer in answers]
        return max(t[0] for t in times), sum(t[1] for t in times)

    def close(self) -> None:
        for proc in self.procs:
            proc.stdin.close()
            proc.wait()


def measure_all(folder: str, count: int, a) -> list[dict]:
    pools = {(m, w): Pool(m, folder, w, a.rows) for w in a.workers for m in METHODS}
    results = []
    try:
        for size in a.sizes:
            for w in a.workers:
                for run in range(a.runs):  # a configuration's runs close in time; no method always first
                    for m in METHODS[run % len(METHODS):] + METHODS[:run % len(METHODS)]:
                        seconds, cpu = pools[(m, w)].measure(size, a.repeat)
                        images = count * a.repeat * w
                        results.append(dict(run=run, size=size, workers=w, method=m, images=images, seconds=seconds,
                                            cpu_seconds=cpu, images_per_s=images / seconds,
                                            images_per_cpu_s=images / cpu))
                        print(f"  run {run} {size:>3} px x{w} {m:<18} {images / seconds:8.1f} img/s "
                              f"{images / cpu:8.1f} img/CPU-s", flush=True)
    finally:
        for pool in pools.values():
            pool.close()
    return results


#: the two figures of a measurement: aggregate images per wall second, images per CPU second of one process
MEASURES = ("images_per_s", "images_per_cpu_s")


def _spread(values) -> dict:
    return dict(median=statistics.median(values), min=min(values), max=max(values))


def summarise(results: list[dict], sizes, workers) -> list[dict]:
    rows = []
    for size in sizes:
        for w in workers:
            mine = [r for r in results if r["size"] == size and r["workers"] == w]
            row = dict(size=size, workers=w)
            for measure in MEASURES:
                pick = {m: {r["run"]: r[measure] for r in mine if r["method"] == m} for m in METHODS}
                row[measure] = {m: _spread(list(pick[m].values())) for m in METHODS}
                row[measure].update({f"{m}/timm": _spread([pick[m][run] / pick["timm"][run] for run in pick[m]])
                                     for m in EFFV2})
            rows.append(row)
    return rows


def print_table(summary: list[dict]) -> None:
    titles = {"images_per_s": "aggregate images per wall second", "images_per_cpu_s": "images per CPU second"}
    for measure in MEASURES:
        print(f"\n{titles[measure]}, median [min-max] over runs")
        print("| size | workers | " + " | ".join(METHODS) + " |")
        print("|---" * (len(METHODS) + 2) + "|")
        for row in summary:
            cells = [f"{v['median']:.0f} [{v['min']:.0f}-{v['max']:.0f}]" for v in (row[measure][m] for m in METHODS)]
            print(f"| {row['size']} | {row['workers']} | " + " | ".join(cells) + " |")
        print(f"\neffv2 / timm, {titles[measure]}, per run: median [min-max]")
        print("| size | workers | " + " | ".join(EFFV2) + " |")
        print("|---" * (len(EFFV2) + 2) + "|")
        for row in summary:
            cells = [f"{v['median']:.2f} [{v['min']:.2f}-{v['max']:.2f}]"
                     for v in (row[measure][f"{m}/timm"] for m in EFFV2)]
            print(f"| {row['size']} | {row['workers']} | " + " | ".join(cells) + " |")


def write_json(path: Path, doc: dict) -> None:
    """Atomically, with the user's umask (a temp file in the same folder, then os.replace)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=at_least(8), nargs="+", default=[128, 224, 300])
    ap.add_argument("--workers", type=at_least(1), nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=at_least(1), default=3)
    ap.add_argument("--images", type=at_least(WARMUP_FILES), default=48)
    ap.add_argument("--repeat", type=at_least(1), default=4, help="passes over the files per measurement")
    ap.add_argument("--rows", type=at_least(1), default=16, help="rows per RandAugment call (a worker's range)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = ap.parse_args()
    if a.out is not None and a.out.exists() and not a.overwrite:
        ap.error(f"--out: {a.out} exists; pass --overwrite to replace it")
    if a.out is not None and not a.out.parent.is_dir():
        ap.error(f"--out: folder {a.out.parent} does not exist")
    return a


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    a = parse_args()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="effv2-bench-jpegs-") as folder:
        make_jpegs(Path(folder), a.images)
        results = measure_all(folder, a.images, a)
    summary = summarise(results, a.sizes, a.workers)
    print_table(summary)
    after = os.getloadavg()
    print(f"load average after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    if a.out is not None:
        write_json(a.out, dict(config=dict(sizes=a.sizes, workers=a.workers, runs=a.runs, images=a.images,
                                           repeat=a.repeat, rows=a.rows, side=[SIDE_W, SIDE_H]),
                               load_before=load, load_after=after, results=results, summary=summary))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
