"""`ProgressiveSchedule`: progressive learning (EfficientNetV2 paper, Algorithm 1).

Two readings exist and a schedule names which one it follows:

* ``paper``: stage i of M uses S_i = S_0 + (S_e - S_0) * i / (M - 1) and the same
  interpolation for every regulariser; the first stage is at the start values.
* ``automl``: google/automl main.py: image size int(S_0 + (S_e - S_0) * (i + 1) / M)
  (so the first stage is already above S_0), regularisers np.linspace(start, end, M).

Both end stage i at step floor((i + 1) * N / M), so stage steps sum exactly to N.
M = 1 is one stage at the end values in both readings (automl's code would use the
regulariser *start* values there, a quirk we do not reproduce: it ignores the target).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import SPEC_VERSION, SafeName, SpecModel

#: Regularisers a schedule may raise, with the closed range each value must lie in.
REGULARIZER_BOUNDS: dict[str, tuple[float, float]] = {
    "dropout": (0.0, 0.99),
    "randaugment_magnitude": (0.0, 30.0),
    "mixup_alpha": (0.0, 100.0),
    "cutmix_alpha": (0.0, 100.0),
    "drop_path_rate": (0.0, 0.99),
}

RegularizerName = Literal["dropout", "randaugment_magnitude", "mixup_alpha", "cutmix_alpha", "drop_path_rate"]


class Ramp(SpecModel):
    """A value raised from `start` (first stage) to `end` (last stage)."""

    start: float
    """Value in the first stage (paper) or the linspace start (automl)."""
    end: float
    """Value in the last stage."""


class ImageSizeRamp(SpecModel):
    """Training image size raised from `start` to `end`."""

    start: Annotated[int, Field(ge=1, le=4096)] = 128
    """S_0 (official ibase: 128)."""
    end: Annotated[int, Field(ge=1, le=4096)]
    """S_e, the final training size (official S: 300)."""
    multiple: Annotated[int, Field(ge=1, le=256)] = 1
    """Sizes are floored to a multiple of this (never below it)."""


class ScheduleStage(SpecModel):
    """One row of the per-stage table."""

    index: int
    image_size: int
    start_step: int
    end_step: int
    steps: int
    regularizers: dict[str, float]


class ProgressiveSchedule(SpecModel):
    """Progressive learning: M stages over N steps, image size and regularisation raised per stage."""

    effv2_spec_version: Literal["1.0"] = SPEC_VERSION
    """Spec format version."""
    kind: Literal["progressive_schedule"] = "progressive_schedule"
    """Document kind."""
    name: SafeName
    """Schedule name (presets: progressive-<model>-<convention>)."""
    convention: Literal["paper", "automl"]
    """Interpolation rule: 'paper' (Algorithm 1, i/(M-1)) or 'automl' (official code, (i+1)/M for size)."""
    total_steps: Annotated[int, Field(ge=1, le=10**9)] | None = None
    """N, total optimisation steps. Exactly one of total_steps and total_epochs."""
    total_epochs: Annotated[float, Field(gt=0.0, le=10**6)] | None = None
    """Training length in epochs; needs steps_per_epoch when the table is computed."""
    num_stages: Annotated[int, Field(ge=1, le=1000)] = 4
    """M (official: 4)."""
    image_size: ImageSizeRamp
    """Training image size per stage."""
    regularizers: dict[RegularizerName, Ramp] = Field(default_factory=dict)
    """Regularisers raised per stage, by name."""

    @model_validator(mode="after")
    def _consistent(self) -> "ProgressiveSchedule":
        if (self.total_steps is None) == (self.total_epochs is None):
            raise ValueError("total_steps: give exactly one of total_steps and total_epochs")
        if self.total_steps is not None and self.num_stages > self.total_steps:
            raise ValueError(
                f"num_stages: must not exceed total_steps ({self.num_stages} stages > {self.total_steps} steps)"
            )
        if self.image_size.start > self.image_size.end:
            raise ValueError(
                f"image_size.start: must not exceed image_size.end ({self.image_size.start} > {self.image_size.end})"
            )
        if self.image_size.multiple > self.image_size.end:
            # every stage would be floored up to `multiple`, training above the stated final size
            raise ValueError(f"image_size.multiple: must not exceed image_size.end "
                             f"({self.image_size.multiple} > {self.image_size.end})")
        for name, ramp in self.regularizers.items():
            lo, hi = REGULARIZER_BOUNDS[name]
            for which in ("start", "end"):
                value = getattr(ramp, which)
                if not lo <= value <= hi:
                    raise ValueError(f"regularizers.{name}.{which}: must lie in [{lo}, {hi}] (got {value})")
        return self

    def resolve_total_steps(self, steps_per_epoch: int | None = None) -> int:
        if self.total_steps is not None:
            return self.total_steps
        if steps_per_epoch is None or steps_per_epoch < 1:
            raise ValueError("total_epochs: steps_per_epoch (>= 1) is needed to turn epochs into steps")
        return max(1, int(self.total_epochs * steps_per_epoch))

    def stages(self, steps_per_epoch: int | None = None) -> list[ScheduleStage]:
        """The per-stage table: image size, step range and every regulariser's value."""
        total = self.resolve_total_steps(steps_per_epoch)
        m = self.num_stages
        if m > total:
            raise ValueError(f"num_stages: must not exceed total steps ({m} stages > {total} steps)")
        rows = []
        for i in range(m):
            start_step = i * total // m
            end_step = (i + 1) * total // m
            regs = {name: _linspace(r.start, r.end, i, m) for name, r in self.regularizers.items()}
            rows.append(
                ScheduleStage(
                    index=i,
                    image_size=self._image_size(i),
                    start_step=start_step,
                    end_step=end_step,
                    steps=end_step - start_step,
                    regularizers=regs,
                )
            )
        return rows

    def _image_size(self, i: int) -> int:
        s0, se, m = self.image_size.start, self.image_size.end, self.num_stages
        if self.convention == "paper":
            size = se if m == 1 else s0 + (se - s0) * i / (m - 1)
            # round half up: the paper's S_i is real-valued, a pixel count is not
            size = int(math.floor(size + 0.5))
        else:
            size = int(s0 + (se - s0) * (i + 1) / m)
        mult = self.image_size.multiple
        return max(mult, size // mult * mult)


def _linspace(start: float, end: float, i: int, m: int) -> float:
    # endpoints exactly, as np.linspace gives them; the formula alone can miss `end` by an ulp
    if i == m - 1:
        return float(end)
    if i == 0:
        return float(start)
    return float(start + (end - start) * i / (m - 1))
