"""Training data, framework-neutral (NumPy + Pillow, no Numba): sources (digits, .npz, image folders,
Parquet shards),
the official train transform (random-resized crop, flip), RandAugment (automl and torchvision
variants), mixup / cutmix per mix group, batches."""

from .crop import horizontal_flip, random_resized_crop, sample_crop_box
from .mixing import cutmix, cutmix_box, mix_group
from .mixup import mixup, one_hot
from .pipeline import to_input
from .randaugment import OPS, apply_op, randaugment, randaugment_batch
from .randaugment_automl import randaugment_image
from .resize import resize_bilinear
from .errors import DataError
from .sources import Dataset, Source, check_arrays, load_digits, load_npz, open_source, open_split, split

__all__ = [
    "DataError", "Dataset", "OPS", "apply_op", "check_arrays", "cutmix", "cutmix_box", "horizontal_flip",
    "load_digits", "load_npz", "open_source", "open_split", "Source", "mix_group", "mixup", "one_hot", "randaugment",
    "randaugment_batch", "randaugment_image", "random_resized_crop", "resize_bilinear", "sample_crop_box", "split",
    "to_input",
]
