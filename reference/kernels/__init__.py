"""Numba kernels of the reference oracle (the only place numba is imported), one job per sub-package.

- `network/`: the network's compute behind ops/ and the optimisers (batch norm, SiLU, the
  convolutions' data movement, depthwise convolution, SGD);
- `data/`: the kernels the NumPy-only training layer (the plan, keyed.py, the data pipeline) takes
  through `kernel_gate` in a process that has loaded Numba (Philox, SeedSequence keys, RandAugment,
  the crop's resize);
- `runtime/`: the process, not its values: the thread pool (`runtime.pool.set_num_threads`), the
  memory fence of the replicas' shared-memory exchanges, glibc's heap kept (`runtime.heap`).

Each kernel module has a table `TWINS`: its compiled entry points -> their NumPy twins (`*_naive`,
simple and slow), or None with the reason in `NO_TWIN_REASONS`. tests/reference/test_kernel_twins.py
fails for an entry point without a twin, or without a test that names it together with its twin.
Importing this package, or a sub-package, imports no kernel.
"""
