"""Exponential moving average of weights and BN running statistics (`TrainingConfig.ema`).

TF's `ExponentialMovingAverage(decay, num_updates=global_step)`, which google/automl applies
after each optimiser step: `shadow = d * shadow + (1 - d) * value` with
`d = min(decay, (1 + t) / (10 + t))` when `num_updates_warmup`, where t is the global step
*after* the optimiser's increment (1 on the first update). The warm-up matters on short runs:
with decay 0.9999 and no warm-up the average would still be the initial weights after
thousands of steps. The shadow starts as a copy of the tensors it tracks, as TF's does.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from effv2_spec.training import EMA

from effv2_train.recipe import ema_decay  # noqa: F401 (the rule lives in the recipe; re-exported)


class WeightEMA:
    """Shadow copies of a set of tensors, moved toward them by `update(tensors, num_updates)`."""

    def __init__(self, config: EMA, tensors: Mapping[str, np.ndarray]):
        self.config = config
        self.shadow = {k: np.array(v, copy=True) for k, v in tensors.items()}

    def update(self, tensors: Mapping[str, np.ndarray], num_updates: int) -> float:
        d = ema_decay(self.config, num_updates)
        for k, s in self.shadow.items():
            v = tensors[k]
            # s -= (1 - d) * (s - v), TF's assign_sub form: the same value as d * s + (1 - d) * v
            s -= s.dtype.type(1.0 - d) * (s - v)
        return d

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.shadow.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"EMA state: missing {', '.join(missing[:5])}")
        for k, s in self.shadow.items():
            s[...] = state[k]
