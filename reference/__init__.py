"""effv2's reference oracle: the NumPy / Numba network every backend is checked against.

Needs the `reference` extra, which brings Numba:
- `model.ReferenceModel`: the network built from `effv2_spec.resolve` tables, forward and backward
  written out per op in `ops/` (docs/internals.md is its contract);
- `kernels/` (`network/`, `data/`, `runtime/`): the Numba kernels behind the ops and the data pipeline,
  each with a NumPy twin kept equal by tests; the only modules that import numba when imported
  (`kernels/runtime` imports none: loader workers and the train command use its heap setting);
- `optim` (SGD, RMSProp, AdamW on canonical slots), `ema`, `train` (the oracle's trainer and
  `OracleBackend`), `replicas` (forked data-parallel processes over shared memory), `gradcheck`
  (finite differences).

Everything framework-neutral (the plan and loop, keyed randomness, init, checkpoints, record, data
sources and pipeline, preprocessing, labels, the train command) is `effv2_train`, NumPy and Pillow
only, which this package builds on and which never imports it at import time.

Importing the package imports nothing: every module is imported on its own.
"""
