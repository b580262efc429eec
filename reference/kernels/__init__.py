"""Numba kernels of the reference oracle (the only place numba is imported).

Each kernel has a slow NumPy twin next to it (`*_naive`), kept equal by tests.
"""


def set_num_threads(n: int) -> None:
    """Threads the parallel kernels may use (at most numba's NUMBA_NUM_THREADS); BLAS is limited separately."""
    import numba

    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
