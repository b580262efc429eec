"""effv2's reference oracle: the NumPy / Numba network every backend is checked against, and the
framework-neutral training layer the torch and JAX trainers share.

The oracle (needs the `reference` extra, which brings Numba):
- `model.ReferenceModel`: the network built from `effv2_spec.resolve` tables, forward and backward
  written out per op in `ops/` (docs/internals.md is its contract);
- `kernels/`: the Numba kernels behind the ops, each with a NumPy twin kept equal by tests; the only
  modules that import numba when imported (data/loader.py's worker processes load it on purpose);
- `optim` (SGD, RMSProp, AdamW on canonical slots), `train.OracleBackend`, `replicas` (forked data-
  parallel processes over shared memory), `gradcheck` (finite differences).

NumPy (and Pillow) only, so a torch or JAX run never loads Numba: `init` (the seeded start of every
backend), `plan` and `keyed` (stages, batches, masks from the seed), `recipe`, `trainloop`, `ema`,
`checkpoint`, `npzfile`, `record`, `data/` (sources and the augmentation pipeline), `preprocess`,
`eval_data`, `labels`. `kernel_gate` lets a NumPy-only module take a kernel with the same bits only
in a process that has already loaded Numba.

Importing the package imports nothing: every module is imported on its own.
"""
