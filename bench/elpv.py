"""The elpv data set (solar-cell electroluminescence images) as an `.npz` that `effv2 train --data` reads.

    python bench/elpv.py [--size 128] [--cache-dir ~/.cache/effv2]    # prints the .npz path

elpv (Deitsch et al., PyPI `elpv-dataset`): 2,624 grayscale 300 x 300 images of solar cells, each
with a defect probability of 0, 1/3, 2/3 or 1, mapped here to the classes 0..3. Its licence (CC
BY-NC-SA) keeps it out of this repository: it is installed into the running interpreter's
environment on demand (`python -m pip install elpv-dataset`) and the `.npz` is written under a
cache folder, never under the repository.

The images are stored at `--size` (area-averaged from 300 px with Pillow's box filter, so a smaller
copy is an honest downscale, not an aliased one); 300 keeps them native. The training loader then
resizes each stage's batch to that stage's size, so small stages really see less.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

NATIVE_SIZE = 300
PACKAGE = "elpv-dataset"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "effv2"


def ensure_package(module: str, package: str):
    """Import `module`, installing `package` with this interpreter's pip first when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    print(f"installing {package} (python -m pip install {package}) ...", file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", package], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise SystemExit(f"{package}: pip install failed: {tail[-1] if tail else 'no output'}")
    importlib.invalidate_caches()
    return importlib.import_module(module)


def classes_of(probabilities: np.ndarray) -> np.ndarray:
    """Defect probabilities 0, 1/3, 2/3, 1 -> classes 0..3; any other value is refused."""
    labels = np.rint(np.asarray(probabilities, dtype=np.float64) * 3).astype(np.int64)
    if np.abs(labels / 3 - probabilities).max() > 1e-6 or labels.min() < 0 or labels.max() > 3:
        raise SystemExit("elpv: defect probabilities are not all in {0, 1/3, 2/3, 1}")
    return labels


def downscale(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) uint8 -> (N, size, size) uint8 with Pillow's box (area) filter."""
    if images.shape[1:] == (size, size):
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BOX)) for im in images])


def build_npz(size: int = NATIVE_SIZE, cache_dir: Path = DEFAULT_CACHE, overwrite: bool = False) -> Path:
    """The path of `elpv-{size}.npz` under `cache_dir`, written (atomically) when it is not there yet."""
    if not 8 <= size <= NATIVE_SIZE:
        raise SystemExit(f"--size: must lie in [8, {NATIVE_SIZE}] (the images are {NATIVE_SIZE} px), got {size}")
    path = Path(cache_dir).expanduser() / f"elpv-{size}.npz"
    if path.is_file() and not overwrite:
        return path
    elpv = ensure_package("elpv_dataset.utils", PACKAGE)
    gray, probabilities, _ = elpv.load_dataset()
    images = downscale(np.asarray(gray, dtype=np.uint8), size)[..., None]  # NHWC, one channel
    labels = classes_of(probabilities)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".elpv-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, labels=labels)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=NATIVE_SIZE, help="stored image size (default: native 300)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--overwrite", action="store_true", help="rebuild an existing .npz")
    a = ap.parse_args()
    path = build_npz(a.size, a.cache_dir, a.overwrite)
    with np.load(path) as z:
        counts = np.bincount(z["labels"], minlength=4)
        print(f"{path}: {z['images'].shape[0]} images {z['images'].shape[1:]} uint8, classes 0..3: "
              f"{', '.join(str(int(c)) for c in counts)}")


if __name__ == "__main__":
    main()
