"""The oracle's optional kernels for code that must stay NumPy only (the plan, the data pipeline).

`plan.py` and `data/` are imported by the PyTorch and JAX trainers too, which never load Numba.
A few of their hot loops have a Numba kernel giving the same bits (masks: kernels/data/philox.py;
RandAugment: kernels/data/randaugment.py). They take it only in a process that has already loaded Numba
(the oracle's, and every trainer's loader workers, which load Numba themselves: data/loader.py), so
importing them never loads Numba. The data pipeline's kernels (`data_kernel`) can be turned off with
EFFV2_DATA_KERNELS=numpy: the same bits, from the NumPy ops (the loader's workers then never load Numba).

NumPy only.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import lru_cache


#: EFFV2_DATA_KERNELS=numpy: the data pipeline runs its NumPy ops even where Numba is loaded
DATA_KERNELS_ENV = "EFFV2_DATA_KERNELS"


def data_kernels_wanted() -> bool:
    """False when EFFV2_DATA_KERNELS=numpy (any other value, or none, leaves the kernels on)."""
    return os.environ.get(DATA_KERNELS_ENV, "").strip().lower() != "numpy"


def data_kernel(module: str, name: str):
    """`kernel_if_numba_loaded` for the data pipeline: also None when EFFV2_DATA_KERNELS=numpy."""
    return kernel_if_numba_loaded(module, name) if data_kernels_wanted() else None


def kernel_if_numba_loaded(module: str, name: str):
    """`effv2_reference.<module>.<name>` once Numba is loaded in this process, else None (also when that
    module cannot be imported: the caller then runs its NumPy path)."""
    if "numba" not in sys.modules:
        return None
    return _imported(module, name)


@lru_cache(maxsize=None)
def _imported(module: str, name: str):
    try:
        return getattr(importlib.import_module(f"effv2_reference.{module}"), name)
    except ImportError:
        return None
