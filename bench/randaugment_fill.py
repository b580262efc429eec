"""How much of a training image RandAugment leaves, by image size: automl's absolute pixels against pixels
relative to the image (`augmentation.randaugment_reference_size`).

    python bench/randaugment_fill.py [--images 400] [--layers 2] [--reference-size 224]

For each (size, magnitude) pair of a progressive run, the share of images (the embedded digits, resized
to the size) that two RandAugment layers leave with at least half of their pixels at the fill value 128
(what translate and cutout put where the image was). automl's translate (100 px at magnitude 10) and
cutout (half-side 40 px) were made for 128-380 px crops; on the 16-32 px images of a CPU run they blank
a quarter to a third of a stage's images, the cause of the default run's falling held-out accuracy.
"""

from __future__ import annotations

import argparse

import numpy as np

from cli_args import at_least
from effv2_train.data import load_digits, split
from effv2_train.data import randaugment_automl as ra
from effv2_train.data.pipeline import _resize_uint8

#: (image size, magnitude): the nano's CPU schedule (16 -> 32 px, magnitude 0 -> 5), V2-S's first and last
#: stages in google/automl (128 px at 5, 300 px at 15)
POINTS = ((24, 2.5), (32, 5.0), (64, 5.0), (128, 5.0), (300, 15.0))


def blank_share(images: np.ndarray, layers: int, magnitude: float, reference_size: int | None) -> float:
    """Share of `images` that come out >= half fill while they went in with < 10 % fill."""
    blank = 0
    for i, img in enumerate(images):
        out = ra.randaugment(img, layers, magnitude, np.random.default_rng(i), reference_size=reference_size)
        blank += bool((out == ra.FILL).mean() >= 0.5 and (img == ra.FILL).mean() < 0.1)
    return blank / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=at_least(1), default=400)
    ap.add_argument("--layers", type=at_least(1), default=2)
    ap.add_argument("--reference-size", type=at_least(8), default=224)
    a = ap.parse_args()
    digits = split(load_digits())[0].images[:a.images]
    print(f"| size | magnitude | blanked, absolute pixels | blanked, relative (R = {a.reference_size}) |")
    print("|---|---|---|---|")
    for size, magnitude in POINTS:
        images = _resize_uint8(digits, size)
        absolute = blank_share(images, a.layers, magnitude, None)
        relative = blank_share(images, a.layers, magnitude, a.reference_size)
        print(f"| {size} | {magnitude:g} | {100 * absolute:.1f} % | {100 * relative:.1f} % |")


if __name__ == "__main__":
    main()
