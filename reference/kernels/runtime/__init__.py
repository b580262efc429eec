"""The process runtime of the oracle, not arithmetic on the network's values.

pool (the thread pool every parallel kernel and GEMM splits over, `set_num_threads`), fence (the
memory fence and spin of the shared-memory exchanges between replica processes). Importing this
package imports none of them; pool loads no Numba.
"""
