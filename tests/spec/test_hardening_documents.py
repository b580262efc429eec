"""Hostile documents: every malformed, oversized or oddly typed input is a SpecError (a one-line
message naming the field and the rule), never another exception, and the schema bounds sizes."""

import json
import string

import pytest
from hypothesis import given, strategies as st

from effv2_spec import presets
from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.documents import MAX_DOCUMENT_BYTES, KINDS, load_document, parse_obj, parse_text, read_text
from effv2_spec.errors import SpecError
from effv2_spec.schedule import ProgressiveSchedule
from effv2_spec.training import TrainingConfig

NANO = json.loads(presets.text("efficientnetv2-nano"))
SCHEDULE = json.loads(presets.text("progressive-efficientnetv2-nano-paper"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
# documents that look like specs: the top-level keys the loader inspects, with any JSON value
document_dicts = st.dictionaries(
    st.sampled_from(["kind", "stages", "name", "stem", "input", "num_classes", "image_size"]) | st.text(max_size=6),
    json_values, max_size=6)


def _problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_text(text)
    return info.value.problems


@given(document_dicts)
def test_any_json_object_is_a_document_or_a_spec_error(doc):
    try:
        parse_text(json.dumps(doc))
    except SpecError as exc:
        assert exc.problems and all(isinstance(p, str) and m for p, m in exc.problems)


@given(st.binary(max_size=200))
def test_any_bytes_are_a_document_or_a_spec_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("b") / "x.json"
    path.write_bytes(data)
    try:
        parse_text(read_text(path))
    except SpecError as exc:
        assert exc.problems


@given(st.sampled_from(presets.names()), st.floats(0.0, 0.999))
def test_a_truncated_preset_is_a_spec_error(name, fraction):
    text = presets.text(name)
    with pytest.raises(SpecError):
        parse_text(text[: int(len(text) * fraction)])


@pytest.mark.parametrize("kind", [[], {"a": 1}, 3, None, "model"])
def test_kind_of_any_type_is_named(kind):
    (path, rule), = _problems(json.dumps({"kind": kind}))
    assert path == "kind" and rule.startswith("must be one of architecture, progressive_schedule, training")


def test_stages_that_are_not_a_list_are_named():
    problems = _problems(json.dumps(dict(NANO, stages=5)))
    assert ("stages", "Input should be a valid array (got 5)") in problems


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"name": ' + "[" * 5000 + "]" * 5000 + "}",
                                  '{"a": ' * 50_000 + "1" + "}" * 50_000])
def test_deep_nesting_is_a_spec_error(text):
    assert _problems(text)


def test_integer_literals_beyond_pythons_digit_limit():
    (path, rule), = _problems('{"num_classes": ' + "9" * 5000 + "}")
    assert "number out of range" in rule
    doc = dict(NANO, num_classes=int("9" * 4200))
    (path, rule), = _problems(json.dumps(doc))
    assert path == "num_classes" and "less than or equal to 1000000" in rule


@pytest.mark.parametrize("field,value,bound", [
    (("stem", "channels"), 10**12, "16384"),
    (("stages", 0, "out_channels"), 10**9, "16384"),
    (("stages", 0, "repeats"), 1000, "64"),
    (("head", "channels"), 2**63, "16384"),
    (("num_classes",), 10**12, "1000000"),
    (("input", "train_image_size"), 10**6, "8192"),
    (("input", "channels"), 1000, "64"),
    (("scaling", "divisor"), 10**6, "1024"),
])
def test_every_size_has_an_upper_bound_that_the_error_states(field, value, bound):
    doc = json.loads(json.dumps(NANO))
    target = doc
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    problems = _problems(json.dumps(doc))
    dotted = ".".join(f"[{k}]" if isinstance(k, int) else k for k in field).replace(".[", "[")
    assert any(p == dotted and bound in m for p, m in problems), problems


def test_compound_scaling_cannot_explode():
    doc = dict(NANO, scaling={"compound": {"phi": 16.0, "alpha": 4.0}})
    (path, rule), = _problems(json.dumps(doc))
    assert path == "scaling.compound.phi" and "depth multiplier" in rule


@pytest.mark.parametrize("name", ["../../escaped", "a/b", ".hidden", "-opt", "evil\n\x1b[31m", "caf\u00e9",
                                  "rtl\u202e", "a b", ""])
def test_unsafe_names_are_refused(name):
    problems = _problems(json.dumps(dict(NANO, name=name)))
    assert [p for p, _ in problems] == ["name"]
    assert "\n" not in problems[0][1] and "\x1b" not in problems[0][1]


@given(st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=40))
def test_safe_names_are_accepted_unless_they_lead_with_a_dot_or_dash(name):
    doc = dict(NANO, name=name)
    if name[0] in ".-":
        with pytest.raises(SpecError):
            parse_obj(doc)
    else:
        assert parse_obj(doc).name == name


def test_schedule_names_are_safe_too():
    with pytest.raises(SpecError, match="name"):
        parse_obj(dict(SCHEDULE, name="../x"))


def test_unknown_field_names_are_escaped():
    problems = _problems(json.dumps(dict(NANO, **{"\x1b[31mx": 1})))
    assert problems == [("'\\x1b[31mx'", "unknown field")]


def test_image_size_multiple_may_not_exceed_the_end():
    doc = json.loads(json.dumps(SCHEDULE))
    doc["image_size"]["multiple"] = doc["image_size"]["end"] + 1
    (path, rule), = _problems(json.dumps(doc))
    assert path == "image_size.multiple" and "must not exceed image_size.end" in rule


@pytest.mark.parametrize("model", list(KINDS.values()))
def test_python_dicts_validate_exactly_as_json(model):
    for name in presets.names():
        text = presets.text(name)
        if KINDS[json.loads(text).get("kind", "architecture")] is model:
            assert model.model_validate(json.loads(text)) == model.model_validate_json(text)


def test_python_dicts_keep_json_strictness():
    doc = json.loads(json.dumps(NANO))
    doc["stem"]["channels"] = "16"  # a string is no more an int in a dict than in a file
    with pytest.raises(ValueError, match="valid integer"):
        ArchitectureSpec.model_validate(doc)
    doc["stem"]["channels"] = 16.0
    with pytest.raises(ValueError, match="valid integer"):
        ArchitectureSpec.model_validate(doc)
    spec = ArchitectureSpec.model_validate(NANO)
    assert ArchitectureSpec.model_validate(spec) == spec  # instances still pass through


def test_python_dicts_of_every_kind_accept_tuples_and_lists():
    sched = ProgressiveSchedule.model_validate(SCHEDULE)
    assert sched.name == SCHEDULE["name"]
    assert TrainingConfig.model_validate(json.loads(presets.text("training-cpu"))).kind == "training"
    doc = json.loads(json.dumps(NANO))
    doc["input"]["normalization"] = {"mean": (1.0, 2.0, 3.0), "std": [4.0, 5.0, 6.0]}
    assert ArchitectureSpec.model_validate(doc).input.normalization.mean == (1.0, 2.0, 3.0)


def test_oversized_and_endless_files_are_refused_without_reading_them_whole(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(SpecError, match="larger than 16 MiB"):
        read_text(big)
    with pytest.raises(SpecError, match="larger than 16 MiB"):
        read_text("/dev/zero")


def test_empty_path_names_no_file():
    with pytest.raises(SpecError, match="empty path"):
        load_document("")


def test_a_bare_preset_name_wins_over_a_folder_and_dot_slash_means_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "efficientnetv2-nano").mkdir()
    assert load_document("efficientnetv2-nano").name == "efficientnetv2-nano"
    with pytest.raises(SpecError, match="is a directory"):
        load_document("./efficientnetv2-nano")


def test_union_tags_are_read_from_the_documents():
    from effv2_spec.errors import union_tags

    assert union_tags() == {"stages": {"fused_mbconv", "mbconv"}, "optimizer": {"sgd", "rmsprop", "adamw"},
                            "decay": {"exponential", "cosine", "constant"}}


@pytest.mark.parametrize("optimizer, line", [
    ({"type": "adamw", "beta1": 5}, "optimizer.beta1: Input should be less than 1 (got 5)"),
    ({"type": "sgd", "momentum": 5}, "optimizer.momentum: Input should be less than 1 (got 5)"),
    ({"type": "sgd", "sgd": 1}, "optimizer.sgd: unknown field"),  # a user's field named like a tag stays
    ({"type": "rmsprop", "moment": 0.9}, "optimizer.moment: unknown field (did you mean 'momentum'?)"),
])
def test_errors_inside_a_union_name_the_users_path(optimizer, line):
    doc = json.loads(presets.load(next(n for n in presets.names() if presets.kind(n) == "training"))
                     .model_dump_json())
    doc["optimizer"] = optimizer
    with pytest.raises(SpecError) as info:
        parse_obj(doc, TrainingConfig)
    assert info.value.lines() == [line]
