"""Numba kernels of the reference oracle (the only place numba is imported), one job per sub-package.

- `network/`: the network's compute behind ops/ and the optimisers (batch norm, SiLU, convolutions'
  data movement, depthwise convolution, SGD);
- `runtime/`: the process, not its values: the thread pool (`runtime.pool.set_num_threads`) and the
  memory fence of the replicas' shared-memory exchanges;
- data kernels (philox, seedseq, randaugment, crop) and `heap` (glibc's malloc kept from returning
  freed memory) are still here, flat.

Each module has a table `TWINS`: its compiled entry points -> their NumPy twins (`*_naive`, simple
and slow), or None with the reason in `NO_TWIN_REASONS`. tests/reference/test_kernel_twins.py fails
for an entry point without a twin, or without a test that names it together with its twin. Importing
this package, or a sub-package, imports no kernel.
"""
