"""The process runtime of the oracle, not arithmetic on the network's values.

pool (the thread pool every parallel kernel and GEMM splits over, `set_num_threads`), fence (the
memory fence and spin of the shared-memory exchanges between replica processes), heap (glibc's malloc
told to keep freed memory, `retain_freed_memory`). Importing this package imports none of them; pool
and heap load no Numba (data/loader.py's workers import heap before deciding whether to load it).
"""
