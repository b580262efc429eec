"""effv2_train: training, framework-neutral (NumPy and Pillow only).

The progressive plan and loop every trainer runs (plan, trainloop, recipe), keyed randomness (keyed),
the seeded init (init), checkpoints and the run's record (checkpoint, record, tensorboard, plot), data
sources and the training pipeline (data), the evaluation transform and labels (preprocess, labels,
eval_data), and the `effv2 train`, `effv2 plot` and `effv2 data` commands. Nothing here imports Numba,
torch or JAX at import time: the oracle's engine (effv2_reference: model, ops, kernels, optimisers,
replicas) is imported where the oracle is asked for, and a framework's trainer through its adapter,
so `pip install 'effv2[torch]'` trains without Numba. The pipeline takes one of the oracle's data
kernels only in a process that has Numba loaded (kernel_gate).
"""
