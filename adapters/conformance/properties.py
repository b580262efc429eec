"""`effv2 conformance`: random specs (every convention, odd sizes) through the harness, shrunk on failure.

Hypothesis draws small architectures from the public strategies (effv2_spec.strategies), a square
input size from the total stride up (odd and even) and a seed, and runs every check of
`run_check` against the baseline. On a failure it shrinks to a minimal failing spec; that spec and
its seed are written to files and the `effv2 check` command that replays it is returned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from effv2_spec.weights import atomic_write_bytes

from .report import CheckReport
from .runner import default_checks, run_check

#: what the drawn specs may be at most: big enough for every block kind and convention, small enough
#: that one example costs about a second
MAX_STAGES, MAX_CHANNELS = 2, 12


@dataclass
class Failure:
    spec: Any
    image_size: int
    seed: int
    error: str
    report: CheckReport | None = None


@dataclass
class ConformanceResult:
    framework: str
    examples: int
    seed: int
    dtype: str
    passed: bool
    failure: Failure | None = None
    files: list[str] = field(default_factory=list)
    command: str = ""
    write_error: str = ""  # why the replay files could not be written (the caller then prints the spec)

    def to_dict(self) -> dict:
        out = {"framework": self.framework, "examples": self.examples, "seed": self.seed, "dtype": self.dtype,
               "passed": self.passed}
        if self.failure is not None:
            f = self.failure
            out["failure"] = {"spec": json.loads(f.spec.model_dump_json()), "image_size": f.image_size, "seed": f.seed,
                              "error": f.error, "files": self.files, "replay": self.command}
        return out


class _Mismatch(AssertionError):
    pass


def _cases(dtype: str):
    from hypothesis import assume
    from hypothesis import strategies as st

    from effv2_spec import strategies as st_effv2
    from effv2_spec.resolve import resolve

    @st.composite
    def cases(draw):
        spec = draw(st_effv2.architecture_specs(max_stages=MAX_STAGES, max_channels=MAX_CHANNELS))
        # >= 2x2 at the last stage: at 1x1 with batch 2 every BN there normalises two numbers to +-1, and
        # the problem is too ill-conditioned to compare (even float64 gradients differ by ~1e-8)
        total = spec.total_stride
        size = draw(st.integers(2 * total, 2 * total + 9))
        if dtype == "float32":
            # a conv with one input per output (1x1 on one channel, depthwise 1x1) under train-mode BN
            # is scale invariant, so its gradient is mathematically zero; float32 rounding noise of a zero
            # has no scale to be measured on (float64 still checks these networks)
            assume(not any(u.kind == "conv_bn" and u.in_channels // u.groups * u.kernel ** 2 == 1
                           for u in resolve(spec, size).units()))
        return spec, size, draw(st.integers(0, 2**31 - 1))

    return cases()


def failure_message(report: CheckReport) -> str:
    return "; ".join(f"{c.check}: {c.reason}" if c.worst_rel_err is None else
                     f"{c.check}: {c.worst_tensor} rel err {c.worst_rel_err:.2e} > {c.tolerance:.0e}"
                     for c in report.failures) or "no check ran"


def run_conformance(framework: str, *, examples: int = 20, seed: int = 0, dtype: str = "float64", adapter: Any = None,
                    baseline: Any = "reference", out_dir: str | Path = ".",
                    progress: Callable[[str], None] | None = None) -> ConformanceResult:
    """Run `examples` random specs through `run_check(framework)`; on failure, shrink and write the replay files."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    say = progress or (lambda msg: None)
    seen: list[Failure] = []
    count = [0]

    @settings(max_examples=examples, database=None, deadline=None, derandomize=False, print_blob=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @hypothesis_seed(seed)
    @given(_cases(dtype))
    def prop(case):
        spec, size, case_seed = case
        count[0] += 1
        say(f"example {count[0]}: {len(spec.stages)} stage(s), {size}x{size}, seed {case_seed}")
        try:
            report = run_check(spec, framework, dtype=dtype, image_size=size, batch=2, seed=case_seed, adapter=adapter,
                               checks=default_checks(dtype),
                               baseline=baseline)
        except Exception as exc:  # a crashing backend is a failure to shrink and replay too
            seen.append(Failure(spec, size, case_seed, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            raise _Mismatch(seen[-1].error) from None
        if not report.passed:
            seen.append(Failure(spec, size, case_seed, failure_message(report), report))
            raise _Mismatch(seen[-1].error)

    result = ConformanceResult(framework, examples, seed, dtype, passed=True)
    try:
        prop()
    except _Mismatch:
        result.passed = False
        result.failure = seen[-1]  # hypothesis replays the shrunk example last
        try:
            result.files, result.command = _write_replay(result, Path(out_dir))
        except OSError as exc:  # the failure found is not lost: the caller prints the spec and the command
            result.command = _replay_command(result, Path(out_dir) / SPEC_FILE)
            result.write_error = f"{exc.filename or out_dir}: cannot write ({exc.strerror or exc})"
    return result


SPEC_FILE, RECORD_FILE = "conformance-failure.spec.json", "conformance-failure.json"


def _replay_command(result: ConformanceResult, spec_path: Path) -> str:
    f = result.failure
    return (f"effv2 check {spec_path} --framework {result.framework} --dtype {result.dtype} "
            f"--image-size {f.image_size} --batch 2 --seed {f.seed}")


def _write_replay(result: ConformanceResult, out_dir: Path) -> tuple[list[str], str]:
    """The shrunk spec (loadable by `effv2 check`) and a record with its seed, size and the command."""
    f = result.failure
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path, record_path = out_dir / SPEC_FILE, out_dir / RECORD_FILE
    command = _replay_command(result, spec_path)
    atomic_write_bytes(spec_path, (f.spec.model_dump_json(indent=2) + "\n").encode())
    record = {**result.to_dict()["failure"], "files": [str(spec_path), str(record_path)], "replay": command,
              "framework": result.framework, "dtype": result.dtype}
    atomic_write_bytes(record_path, (json.dumps(record, indent=2) + "\n").encode())
    return [str(spec_path), str(record_path)], command


__all__ = ["ConformanceResult", "Failure", "run_conformance", "failure_message"]
