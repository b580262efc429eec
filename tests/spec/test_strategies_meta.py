"""The public strategies reach the cases that matter (array-api-tests' meta tests idea)."""

import pytest
from hypothesis import find, settings

from effv2_spec import resolve, strategies as s

COVERAGE = settings(max_examples=2000, database=None)

ARCH_CASES = {
    "fused block": lambda spec: any(st.type == "fused_mbconv" for st in spec.stages),
    "mbconv block": lambda spec: any(st.type == "mbconv" for st in spec.stages),
    "stride 2 stage": lambda spec: any(st.stride == 2 for st in spec.stages),
    "SE on": lambda spec: any(st.se_ratio for st in spec.stages),
    "SE off": lambda spec: any(st.se_ratio is None for st in spec.stages),
    "symmetric padding": lambda spec: spec.conventions.padding == "symmetric",
    "expand-project fused e1": lambda spec: spec.conventions.fused_expand1 == "expand_project"
    and any(st.type == "fused_mbconv" and st.expand_ratio == 1 for st in spec.stages),
    "residual block": lambda spec: any(b.residual for b in resolve(spec).blocks),
    "drop path active": lambda spec: any(b.drop_path_rate > 0 for b in resolve(spec).blocks),
    "odd image size": lambda spec: spec.input.eval_image_size % 2 == 1,
    "in-model normalisation": lambda spec: spec.input.normalization.in_model,
}


@pytest.mark.parametrize("case", sorted(ARCH_CASES))
def test_architecture_strategy_covers(case):
    find(s.architecture_specs(), ARCH_CASES[case], settings=COVERAGE)


@pytest.mark.parametrize("case, predicate", [
    ("one stage", lambda sc: sc.num_stages == 1),
    ("automl", lambda sc: sc.convention == "automl"),
    ("paper with regularizers", lambda sc: sc.convention == "paper" and len(sc.regularizers) >= 2),
    ("uneven steps", lambda sc: sc.total_steps % sc.num_stages != 0),
])
def test_schedule_strategy_covers(case, predicate):
    find(s.schedules(), predicate, settings=COVERAGE)
