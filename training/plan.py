"""The training plan: what every step of a run computes, as a pure function of the run's documents.

One plan drives the oracle trainer and the PyTorch and JAX trainers. For optimisation step k it
says which stage is running (image size, regularisers, per-block drop-path rates through the
stage's resolved table), the learning rate, which samples form the global batch and in which
order, how the batch is cut into batch-norm groups and mix groups, and the random draws of every
sample: its augmentation, its mixup / cutmix partner weight, and its dropout and drop-path masks.

Keyed randomness. Nothing is drawn from a stream whose state depends on who drew before: each
draw comes from a counter-based generator (NumPy's Philox) keyed by (seed, purpose, step, row),
where row is the sample's position in the step's global batch. So a batch assembled by one loader,
by four workers or by two replicas each producing their own rows is the same batch, and a run
resumed at step k makes exactly the draws an uninterrupted run makes. The data order is a
permutation keyed by (seed, epoch).

NumPy only (no numba, no framework): the trainers of every backend import it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.resolve import ResolvedModel, resolve
from effv2_spec.schedule import ProgressiveSchedule, ScheduleStage
from effv2_spec.training import TrainingConfig, learning_rate_at

from .kernel_gate import kernel_if_numba_loaded
from .keyed import keyed_generators, philox_keys

#: regularisers the trainers apply; a schedule naming another with a non-zero value is refused
SUPPORTED_REGULARIZERS = ("dropout", "drop_path_rate", "randaugment_magnitude", "mixup_alpha", "cutmix_alpha")

#: purposes a key can serve; the number is part of the key, so the streams never overlap
PURPOSE_ORDER, PURPOSE_AUGMENT, PURPOSE_MIX, PURPOSE_DROP_PATH, PURPOSE_DROPOUT = 1, 3, 4, 5, 6


class PlanError(ValueError):
    """A run the plan cannot lay out (group sizes that do not divide the batch, a split across groups...)."""


def keyed_rng(seed: int, purpose: int, step: int, row: int) -> np.random.Generator:
    """The generator of one (seed, purpose, step, row): Philox seeded from the four integers."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, purpose, step, row])))


def keyed_rngs(seed: int, purpose: int, step: int, rows) -> list[np.random.Generator]:
    """`keyed_rng(seed, purpose, step, r)` for each r of `rows`: the same streams, the keys derived in one pass."""
    return keyed_generators((seed, purpose, step), rows)


@dataclass(frozen=True)
class StepPlan:
    """Everything about step `step` that is not model state."""

    step: int
    epoch: int
    stage: ScheduleStage
    learning_rate: float
    indices: np.ndarray
    """Dataset indices of the global batch, in batch order (row r is indices[r])."""
    bn_group_size: int
    mix_group_size: int

    @property
    def batch_size(self) -> int:
        return int(self.indices.shape[0])


class TrainingPlan:
    """The per-step plan of one run: `plan.at(step)`, `plan.masks(...)`, `plan.shards(...)`.

    `num_train` is the number of training samples. The global batch is the training config's
    batch size; on a data set smaller than that (a small CPU run), the largest multiple of the
    stated BN and mix groups that the data set holds.
    """

    @staticmethod
    def _batch_for(config: TrainingConfig, num_train: int) -> int:
        if num_train >= config.batch_size:
            return config.batch_size
        unit = math.lcm(config.batch_norm.group_size or 1, config.augmentation.mix_group_size or 1)
        batch = num_train - num_train % unit
        if batch < 1:
            raise PlanError(f"training data: {num_train} samples cannot fill one batch-norm / mix group of {unit} "
                            "(batch_norm.group_size, augmentation.mix_group_size)")
        return batch

    def __init__(self, spec: ArchitectureSpec, schedule: ProgressiveSchedule, config: TrainingConfig,
                 num_train: int, *, seed: int = 0):
        if num_train < 1:
            raise PlanError("training data: no samples")
        self.spec, self.schedule, self.config = spec, schedule, config
        self.seed = int(seed)
        self.num_train = int(num_train)
        self.batch_size = self._batch_for(config, self.num_train)
        self.steps_per_epoch = max(1, self.num_train // self.batch_size)
        self.bn_group_size = config.batch_norm.group_size or self.batch_size
        self.mix_group_size = config.augmentation.mix_group_size or self.bn_group_size
        try:
            self.stages: list[ScheduleStage] = schedule.stages(self.steps_per_epoch)
        except ValueError as exc:
            raise PlanError(f"schedule: {exc}") from None
        for st in self.stages:
            for name, value in st.regularizers.items():
                if name not in SUPPORTED_REGULARIZERS and value != 0:
                    raise PlanError(f"regularizers.{name}: not supported by the trainers "
                                    f"(supported: {', '.join(SUPPORTED_REGULARIZERS)})")
        self.total_steps = self.stages[-1].end_step
        self.base = resolve(spec)

    # ---- where a step is ---------------------------------------------------------------------
    def stage_at(self, step: int) -> ScheduleStage:
        for st in self.stages:
            if step < st.end_step:
                return st
        raise PlanError(f"step {step} is past the end of the schedule ({self.total_steps} steps)")

    def learning_rate(self, step: int) -> float:
        return learning_rate_at(self.config, step, self.steps_per_epoch, self.total_steps)

    def batch_indices(self, step: int) -> np.ndarray:
        """Dataset indices of step `step`'s global batch: a slice of the epoch's keyed permutation."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = _permutation(self.seed, epoch, self.num_train)
        return perm[pos * self.batch_size:(pos + 1) * self.batch_size]

    def at(self, step: int) -> StepPlan:
        return StepPlan(step=step, epoch=step // self.steps_per_epoch, stage=self.stage_at(step),
                        learning_rate=self.learning_rate(step), indices=self.batch_indices(step),
                        bn_group_size=self.bn_group_size, mix_group_size=self.mix_group_size)

    def stage_resolved(self, stage: ScheduleStage) -> ResolvedModel:
        """The spec re-resolved with the stage's dropout / drop-path rate (resolve owns per-block rates)."""
        return stage_view(self.base, stage.regularizers)

    # ---- who computes which rows -------------------------------------------------------------
    def shards(self, parts: int) -> list[slice]:
        """The global batch cut into `parts` contiguous row ranges of equal size (replicas, workers).

        Each range holds whole mix groups, so a shard can be mixed without its neighbours; BN groups
        may span shards (a backend then reduces their statistics across replicas).
        """
        if parts < 1 or self.batch_size % parts:
            raise PlanError(f"a batch of {self.batch_size} cannot be split into {parts} equal parts")
        rows = self.batch_size // parts
        if rows % self.mix_group_size:
            raise PlanError(f"augmentation.mix_group_size: a part of {rows} rows would cut a mix group of "
                            f"{self.mix_group_size}; use a mix group that divides {rows}")
        return [slice(i * rows, (i + 1) * rows) for i in range(parts)]

    # ---- random draws ------------------------------------------------------------------------
    def sample_rng(self, purpose: int, step: int, row: int) -> np.random.Generator:
        return keyed_rng(self.seed, purpose, step, row)

    def sample_rngs(self, purpose: int, step: int, rows) -> list[np.random.Generator]:
        """`sample_rng` of each row of `rows` (cheaper than one by one)."""
        return keyed_rngs(self.seed, purpose, step, rows)

    def masks(self, step: int, rows: slice | range | np.ndarray, resolved: ResolvedModel,
              dtype=np.float32) -> dict[str, np.ndarray]:
        """Keep masks (1 = keep) for the rows of step `step`, under the canonical mask names.

        Row r draws one uniform number per residual block (for every residual block of the spec,
        whatever its current rate, so a rate change does not shift another block's draw) and one
        per classifier input feature; a value below the rate drops.
        """
        rows = _row_list(rows, self.batch_size)
        blocks = [b for b in resolved.blocks if b.residual]
        out: dict[str, np.ndarray] = {}
        active = [(i, b) for i, b in enumerate(blocks) if b.drop_path_rate > 0]
        if active:
            u = self._uniforms(PURPOSE_DROP_PATH, step, rows, len(blocks))
            for i, b in active:
                out[f"{b.name}.drop_path"] = (u[:, i] >= b.drop_path_rate).astype(dtype)
        rate = resolved.classifier.dropout
        if rate > 0:
            u = self._uniforms(PURPOSE_DROPOUT, step, rows, resolved.classifier.in_features)
            out["classifier.dropout"] = (u >= rate).astype(dtype)
        return out

    def _uniforms(self, purpose: int, step: int, rows: list[int], n: int) -> np.ndarray:
        """(len(rows), n) float64: `sample_rngs(purpose, step, rows)[i].random(n)` for each row, bit for bit.

        In a process that has loaded Numba (the oracle's), one kernel computes all the rows' streams
        (kernels/data/philox.py; building a generator per row cost ~1 ms per step); elsewhere (the
        framework trainers, which never import Numba) the generators themselves.
        """
        kernel = _philox_kernel()
        keys = philox_keys((self.seed, purpose, step), rows) if kernel is not None else None
        if keys is not None:
            return kernel(keys, n)
        if not rows:
            return np.empty((0, n))
        return np.stack([g.random(n) for g in self.sample_rngs(purpose, step, rows)])


def stage_view(base: ResolvedModel, regularizers: dict[str, float]) -> ResolvedModel:
    """`base` re-resolved with the stage's dropout / drop-path rate."""
    changes = {k: v for k, v in regularizers.items() if k in ("dropout", "drop_path_rate")}
    if not changes:
        return base
    doc = base.spec.model_dump(mode="json")
    if "dropout" in changes:
        doc["head"]["dropout"] = changes["dropout"]
    if "drop_path_rate" in changes:
        doc["conventions"]["stochastic_depth"]["rate"] = changes["drop_path_rate"]
    # JSON mode (lists stand for tuples), as every spec document is read
    return resolve(ArchitectureSpec.model_validate_json(json.dumps(doc)), image_size=base.image_size)


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, PURPOSE_ORDER, epoch]))).permutation(n)
    perm.setflags(write=False)
    return perm


def _philox_kernel():
    """kernels.data.philox.philox_uniforms once Numba is loaded in this process, else None (the plan never loads it)."""
    return kernel_if_numba_loaded("kernels.data.philox", "philox_uniforms")


def _row_list(rows, batch_size: int) -> list[int]:
    if isinstance(rows, slice):
        return list(range(*rows.indices(batch_size)))
    return [int(r) for r in rows]
