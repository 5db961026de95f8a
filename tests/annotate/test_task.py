"""Task spec parsing and validation errors (each names its field)."""
import pytest

from flagstack.annotate.task import SpecError, load_task, parse_task

GOOD = {"name": "t", "instruction": "Do it.", "labels": {"a": "first", "b": ""}}


def test_bundled_bbc_task():
    task = load_task("bbc_news")
    assert task.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert task.type == "single_label" and task.label_field == "label" and task.prompt_format == "plain"
    assert task.answer_prefix == "Topic:" and len(task.view_prefixes) == 2


def test_label_list_form_and_threshold():
    task = parse_task({**GOOD, "type": "multi_label", "labels": ["a", {"name": "b", "threshold": 0.3}]})
    assert [l.threshold for l in task.labels] == [0.5, 0.3]


@pytest.mark.parametrize("change, field", [
    ({"type": "regression"}, "'type'"),
    ({"labels": ["only"]}, "'labels'"),
    ({"labels": ["a", "a"]}, "'labels'"),
    ({"labels": [{"name": "a", "threshold": 2}, "b"]}, "labels[0].threshold"),
    ({"labels": [{"nam": "a"}, "b"]}, "'labels[0]'"),
    ({"instruction": ""}, "'instruction'"),
    ({"prompt": {"format": "xml"}}, "'prompt.format'"),
    ({"colour": 1}, "'colour'"),
    ({"type": "extraction"}, "'labels'"),
    ({"text_field": 3}, "'text_field'"),
    ({"prompt": {"view_prefixes": "Kind:"}}, "'prompt.view_prefixes'"),
    ({"prompt": {"view_prefixes": ["Kind:", "Kind:"]}}, "'prompt.view_prefixes'"),
    ({"prompt": {"answer_prefix": "Kind:", "view_prefixes": ["Kind:"]}}, "'prompt.view_prefixes'"),
    ({"prompt": {"view_prefixes": [""]}}, "'prompt.view_prefixes'"),
])
def test_errors_name_the_field(change, field):
    with pytest.raises(SpecError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_task({**GOOD, **change})


def test_extraction_needs_object_schema():
    base = {"name": "x", "instruction": "Extract.", "type": "extraction"}
    assert parse_task({**base, "schema": {"type": "object", "properties": {"n": {"type": "string"}}}}).schema
    with pytest.raises(SpecError, match="'schema'"):
        parse_task({**base, "schema": {"type": "array"}})


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_task(bad)
    with pytest.raises(SpecError, match="not found"):
        load_task(tmp_path / "missing.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="top level"):
        load_task(top)
