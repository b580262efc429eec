"""Numba kernels of the reference oracle (the only place numba is imported).

Each kernel has a slow NumPy twin next to it (`*_naive`), kept equal by tests.
`set_num_threads(n)` spreads the kernels and the convolution GEMMs over n threads
(kernels/pool.py); the default is one.
"""

from .pool import num_threads, set_num_threads  # noqa: F401
