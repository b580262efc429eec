"""Training data for the oracle: sources (digits, .npz, image folders), RandAugment, mixup, batches."""

from .mixup import mixup, one_hot
from .pipeline import to_input, training_batch
from .randaugment import OPS, apply_op, randaugment, randaugment_batch
from .sources import DataError, Dataset, check_arrays, load_digits, load_folder, load_npz, load_source, split

__all__ = [
    "DataError", "Dataset", "OPS", "apply_op", "check_arrays", "load_digits", "load_folder", "load_npz",
    "load_source", "mixup", "one_hot", "randaugment", "randaugment_batch", "split", "to_input", "training_batch",
]
