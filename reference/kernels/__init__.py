"""Numba kernels of the reference oracle (the only place numba is imported).

Each kernel has a slow NumPy twin next to it (`*_naive`), kept equal by tests.
"""
