"""Numba kernels of the reference oracle (the only place numba is imported).

Each kernel has a slow NumPy twin next to it (`*_naive`), kept equal by tests.
`set_num_threads(n)` spreads the kernels and the convolution GEMMs over n threads
(kernels/pool.py); the default is one. `heap.retain_freed_memory()` keeps freed activations in
the process heap (a process-wide choice that `effv2 train` and the benchmarks make).
"""

from .pool import num_threads, set_num_threads  # noqa: F401
