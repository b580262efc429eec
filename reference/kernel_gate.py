"""The oracle's optional kernels for code that must stay NumPy only (the plan, the data pipeline).

`plan.py` and `data/` are imported by the PyTorch and JAX trainers too, which never load Numba.
A few of their hot loops have a Numba kernel giving the same bits (masks: kernels/philox.py;
RandAugment: kernels/randaugment.py). They take it only in a process that has already loaded Numba
(the oracle's, and its loader workers: data/loader.py), so importing them never loads Numba.

NumPy only.
"""

from __future__ import annotations

import importlib
import sys
from functools import lru_cache


def kernel_if_numba_loaded(module: str, name: str):
    """`effv2_reference.<module>.<name>` once Numba is loaded in this process, else None (also when that
    module cannot be imported: the caller then runs its NumPy path)."""
    if "numba" not in sys.modules:
        return None
    return _imported(module, name)


@lru_cache(maxsize=None)
def _imported(module: str, name: str):
    try:
        return getattr(importlib.import_module(f".{module}", __package__), name)
    except ImportError:
        return None
