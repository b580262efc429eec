"""The conformance kit: the backend protocol, the harness that compares two backends tensor by
tensor, and the property-based runner behind `effv2 conformance`.

    from effv2_adapters.conformance import run_check
    report = run_check(spec, "my_pkg.adapter:MyAdapter")   # against the oracle
"""

from __future__ import annotations

from .inputs import RESIDUAL_GAMMA, conformance_tensors, keep_masks, make_input, with_changes
from .numerics import gradient_scales, rel_err, unit_of
from .protocol import Adapter, OptimizerCapable, SourceCapable, capabilities, missing_methods
from .recipes import training_configs
from .report import NOT_RUN, CheckReport, CheckResult, TensorResult, format_report, verdict
from .runner import (CHECKS, DEFAULT_IMAGE_SIZE, FIELD_CHECKS, TOLERANCES, CheckError, default_checks, get_framework,
                     ready, run_check)

__all__ = ["Adapter", "OptimizerCapable", "SourceCapable", "capabilities", "missing_methods", "CHECKS", "FIELD_CHECKS",
           "default_checks", "TOLERANCES", "DEFAULT_IMAGE_SIZE", "CheckError", "get_framework", "ready", "run_check",
           "NOT_RUN", "CheckReport", "CheckResult", "TensorResult", "format_report", "verdict", "rel_err", "unit_of",
           "gradient_scales",
           "RESIDUAL_GAMMA", "conformance_tensors", "keep_masks", "make_input", "training_configs", "with_changes"]
