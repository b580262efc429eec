"""What a check run returns: per check and per tensor results, JSON and table forms."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

#: a check the backend cannot run (an optional capability it lacks) is reported with this status
NOT_RUN = "not run"


@dataclass
class TensorResult:
    check: str
    name: str
    rel_err: float
    max_ref: float
    scale: float
    """The denominator used: max_ref, or the unit's gradient scale when the baseline's gradient is
    numerically zero (see `gradient_scales`)."""


@dataclass
class CheckResult:
    check: str
    tolerance: float
    tensors: int
    worst_tensor: str
    worst_rel_err: float | None
    passed: bool | None
    """None when the check did not run (see `status`): not run is never passed."""
    seconds: float
    status: Literal["passed", "failed", "not run"] = "passed"
    reason: str = ""


@dataclass
class CheckReport:
    spec: str
    framework: str
    dtype: str
    oracle_dtype: str
    image_size: tuple[int, int]
    batch: int
    seed: int
    checks: list[CheckResult] = field(default_factory=list)
    tensors: list[TensorResult] = field(default_factory=list)
    baseline: str = "reference"

    @property
    def ran(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status != NOT_RUN]

    @property
    def not_run(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == NOT_RUN]

    @property
    def passed(self) -> bool:
        """Every check that ran is within tolerance, and at least one ran."""
        return bool(self.ran) and all(c.passed for c in self.ran)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.ran if not c.passed]

    def to_dict(self, per_tensor: bool = True) -> dict:
        out = {
            "spec": self.spec, "framework": self.framework, "baseline": self.baseline, "dtype": self.dtype,
            "oracle_dtype": self.oracle_dtype, "image_size": list(self.image_size), "batch": self.batch,
            "seed": self.seed, "passed": self.passed, "checks": [asdict(c) for c in self.checks],
            "not_run": [c.check for c in self.not_run],
        }
        if per_tensor:
            out["tensors"] = [asdict(t) for t in self.tensors]
        return out


def _result(c: CheckResult) -> str:
    if c.status == "failed" and c.worst_rel_err is None:
        return f"FAIL: {c.reason}"
    return {"passed": "ok", "failed": "FAIL"}.get(c.status, f"{NOT_RUN}: {c.reason}")


def format_report(report: CheckReport, per_tensor: bool = False) -> tuple[list[str], list[list]]:
    """(columns, rows) of the human-readable table."""
    columns = ["check", "tensors", "worst tensor", "rel err", "tolerance", "result", "s"]
    if per_tensor:
        tol = {c.check: c.tolerance for c in report.checks}
        rows = [[t.check, 1, t.name, f"{t.rel_err:.2e}", f"{tol[t.check]:.0e}",
                 "ok" if t.rel_err <= tol[t.check] else "FAIL", ""] for t in report.tensors]
        return columns, rows + [[c.check, "", "", "", "", _result(c), ""] for c in report.not_run]
    rows = [[c.check, c.tensors, c.worst_tensor, "" if c.worst_rel_err is None else f"{c.worst_rel_err:.2e}",
             f"{c.tolerance:.0e}", _result(c), f"{c.seconds:.1f}"] for c in report.checks]
    return columns, rows


def verdict(report: CheckReport) -> str:
    """The last line `effv2 check` prints: PASS / FAIL, and what did not run."""
    word = "PASS" if report.passed else "FAIL"
    if report.failures:
        word += ": " + "; ".join(failure_text(c) for c in report.failures)
    missing = [c.check for c in report.not_run if c.reason.startswith("capability missing")]
    if missing:
        word += f" ({len(missing)} check(s) not run: capability missing: " + ", ".join(missing) + ")"
    later = [c.check for c in report.not_run if not c.reason.startswith("capability missing")]
    if later:
        word += f" ({len(later)} later check(s) not run: " + ", ".join(later) + ")"
    return word


def failure_text(c: CheckResult) -> str:
    """One failed check: its worst tensor, or what the adapter raised."""
    if c.worst_rel_err is None:
        return f"{c.check} {c.reason}"
    return f"{c.check} worst tensor {c.worst_tensor} (rel err {c.worst_rel_err:.2e} > {c.tolerance:.0e})"


__all__ = ["NOT_RUN", "TensorResult", "CheckResult", "CheckReport", "format_report", "verdict", "failure_text"]
