"""Small image trees and Parquet shards for the data-source tests, written independently of effv2's packer."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["ant", "bee", "cat"]


def photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colour image with texture: JPEG-friendly and different everywhere (crops differ)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)),
                     np.sin(4 * (x + y) + rng.uniform(0, 6))], axis=-1)
    noise = rng.normal(0, 0.15, (height, width, 3))
    return np.clip(127.5 + 100 * base + 40 * noise, 0, 255).astype(np.uint8)


def write_tree(root: Path, per_class: int, *, seed: int = 0, fmt: str = "JPEG", sizes=((30, 40), (37, 50), (48, 36))):
    """ROOT/<class>/<i>.jpg, image i of each class at sizes[i % len(sizes)] (height, width)."""
    rng = np.random.default_rng(seed)
    files = []
    for cls in CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            path = root / cls / f"{i:03d}.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
            Image.fromarray(photo(rng, h, w)).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            files.append(path)
    return files


def write_imagenet_layout(root: Path, train_per_class: int, val_per_class: int) -> Path:
    write_tree(root / "train", train_per_class, seed=1)
    write_tree(root / "val", val_per_class, seed=2)
    return root


def write_shards(folder: Path, tree: Path, split: str, shards: int = 2, row_group: int = 5) -> list[Path]:
    """The files of `tree` (ROOT/<class>/...) as `split`-0000k-of-0000n.parquet in the Hugging Face layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((p for p in tree.rglob("*") if p.is_file()), key=lambda p: (p.parent.name, p.name))
    labels = [CLASSES.index(p.parent.name) for p in files]
    meta = {"info": {"features": {"image": {"_type": "Image"},
                                  "label": {"names": CLASSES, "_type": "ClassLabel"}}}}
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, part in enumerate(np.array_split(np.arange(len(files)), shards)):
        image = pa.array([{"bytes": files[i].read_bytes(), "path": files[i].name} for i in part],
                         type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        table = pa.table({"image": image, "label": pa.array([labels[i] for i in part], pa.int64())})
        table = table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
        path = folder / f"{split}-{k:05d}-of-{shards:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group)
        out.append(path)
    return out


def decode(path_or_bytes, mode: str = "RGB") -> np.ndarray:
    """An independent decode: Pillow, EXIF ignored (the test images carry none)."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        return np.asarray(im.convert(mode))
