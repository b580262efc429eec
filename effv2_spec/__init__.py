"""effv2_spec: EfficientNet V1/V2 architectures and progressive schedules as validated JSON.

Import-light on purpose: `effv2 validate` must never pull in numba, torch or jax.
"""

from .architecture import ArchitectureSpec
from .base import SPEC_VERSION
from .resolve import ResolvedModel, resolve
from .schedule import ProgressiveSchedule
from .training import TrainingConfig

__all__ = ["ArchitectureSpec", "ProgressiveSchedule", "ResolvedModel", "SPEC_VERSION", "TrainingConfig", "resolve"]
