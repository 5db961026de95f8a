"""Extraction: schema checks, JSON parsing, and validate + retry on a backend without constraints."""
from flagstack.annotate.extract import extract, parse_json_object, schema_errors
from flagstack.annotate.prompt import PromptBuilder, PromptConfig
from flagstack.annotate.task import parse_task
from tests.annotate.fakes import KeywordBackend

SCHEMA = {"type": "object", "required": ["name", "year"],
          "properties": {"name": {"type": "string"}, "year": {"type": "integer"},
                         "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}}}


def test_schema_errors():
    assert schema_errors({"name": "x", "year": 2020, "tags": ["a"]}, SCHEMA) == []
    errs = schema_errors({"name": 3, "year": True, "tags": ["c"]}, SCHEMA)
    assert errs == ["$.name: expected string, got int", "$.year: expected integer, got bool",
                    "$.tags[0]: 'c' not in ['a', 'b']"]
    assert schema_errors({}, SCHEMA) == ["$: missing required 'name'", "$: missing required 'year'"]


def test_parse_json_object():
    assert parse_json_object('Sure: {"a": 1} done') == {"a": 1}
    for bad in ("no json", "[1]"):
        try:
            parse_json_object(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


class Scripted(KeywordBackend):
    """Answers from a script, recording the prompts it was asked to continue."""

    def __init__(self, answers):
        super().__init__()
        self.answers, self.asked = list(answers), []

    def generate(self, prompts, max_tokens, json_schema=None):
        self.asked += [self.tokenizer.decode(p) for p in prompts]
        return [self.answers.pop(0) for _ in prompts]


def test_extract_validates_and_retries_with_opened_object():
    task = parse_task({"name": "e", "type": "extraction", "instruction": "Extract.", "schema": SCHEMA,
                       "prompt": {"answer_prefix": "JSON:"}})
    builder = PromptBuilder(task, KeywordBackend().tokenizer, PromptConfig(max_prompt_tokens=1500))
    # one batched call for the three items, then a retry each for the two that failed
    backend = Scripted(['{"name": "A", "year": 1999}', "I think the name is B", "nothing",
                        '"name": "B", "year": 2001}', "still nothing"])
    items = [{"id": i, "text": t} for i, t in enumerate(["A in 1999", "B in 2001", "C"])]
    rows = extract(items, builder, backend)
    assert [r["valid"] for r in rows] == [True, True, False]
    assert rows[1]["fields"] == {"name": "B", "year": 2001} and backend.asked[3].endswith("JSON: {")
    assert rows[2]["error"].startswith("Expecting property name") and rows[2]["confidence"] == 0.0
