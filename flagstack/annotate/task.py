"""Task specs: what to annotate and how, read from YAML and validated with errors naming the field.

A spec names the task type (single_label, multi_label, extraction), the instruction, the labels
with descriptions (classification) or a JSON schema (extraction), the record fields holding the id,
the text and the gold label, and the prompt format.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

TASK_TYPES = ("single_label", "multi_label", "extraction")
PROMPT_FORMATS = ("plain", "chat")
TASKS_DIR = Path(__file__).parent / "tasks"


@dataclasses.dataclass(frozen=True)
class Label:
    name: str
    description: str = ""
    threshold: float = 0.5  # multi_label only: the label is on when its probability reaches this


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    type: str
    instruction: str
    labels: tuple[Label, ...] = ()
    schema: dict | None = None
    text_field: str = "text"
    id_field: str = "id"
    label_field: str | None = None
    prompt_format: str = "plain"
    input_prefix: str = "Text:"
    answer_prefix: str = "Label:"
    # the question asked in other words (readouts may read a zero-shot prompt ending in each; see labeler.py)
    view_prefixes: tuple[str, ...] = ()

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]


class SpecError(ValueError):
    """A bad task spec: the message names the file, the field and what was expected."""


def _fail(source: str, field: str, expected: str, got: Any) -> SpecError:
    return SpecError(f"task spec {source}: field '{field}' must be {expected}, got {got!r}")


def _string(raw: dict, field: str, source: str, default: str | None = None, required: bool = False) -> str | None:
    value = raw.get(field, default)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, field, "a non-empty string", value)
    return value


def _labels(raw: Any, source: str) -> tuple[Label, ...]:
    # Two spellings: {name: description} or [{name:, description:, threshold:}, ...] (or plain names).
    if isinstance(raw, dict):
        raw = [{"name": k, "description": v or ""} for k, v in raw.items()]
    if not isinstance(raw, list) or len(raw) < 2:
        raise _fail(source, "labels", "a mapping or list of at least 2 labels", raw)
    labels = []
    for i, item in enumerate(raw):
        item = {"name": item} if isinstance(item, str) else item
        where = f"labels[{i}]"
        if not isinstance(item, dict):
            raise _fail(source, where, "a label name or a mapping with 'name'", item)
        unknown = set(item) - {"name", "description", "threshold"}
        if unknown:
            raise _fail(source, where, "keys among name, description, threshold", sorted(unknown))
        name = _string(item, "name", f"{source} {where}", required=True)
        description = item.get("description") or ""
        if not isinstance(description, str):
            raise _fail(source, f"{where}.description", "a string", description)
        threshold = item.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise _fail(source, f"{where}.threshold", "a number between 0 and 1", threshold)
        labels.append(Label(name.strip(), description.strip(), float(threshold)))
    names = [label.name for label in labels]
    if len(set(names)) != len(names):
        raise _fail(source, "labels", "unique names", names)
    return tuple(labels)


def _schema(raw: Any, source: str) -> dict:
    if not isinstance(raw, dict) or raw.get("type") != "object" or not isinstance(raw.get("properties"), dict) \
            or not raw["properties"]:
        raise _fail(source, "schema", "a JSON schema object with type: object and non-empty properties", raw)
    return raw


FIELDS = {"name", "type", "instruction", "labels", "schema", "text_field", "id_field", "label_field", "prompt"}
PROMPT_FIELDS = {"format", "input_prefix", "answer_prefix", "view_prefixes"}


def parse_task(raw: Any, source: str = "<dict>") -> TaskSpec:
    """Validate a parsed YAML mapping and build the TaskSpec; raises SpecError naming the field."""
    if not isinstance(raw, dict):
        raise SpecError(f"task spec {source}: expected a mapping at the top level, got {type(raw).__name__}")
    unknown = set(raw) - FIELDS
    if unknown:
        raise _fail(source, ", ".join(sorted(unknown)), f"one of the known fields {sorted(FIELDS)}", "unknown")
    task_type = raw.get("type", "single_label")
    if task_type not in TASK_TYPES:
        raise _fail(source, "type", f"one of {', '.join(TASK_TYPES)}", task_type)
    prompt = raw.get("prompt") or {}
    if not isinstance(prompt, dict) or set(prompt) - PROMPT_FIELDS:
        raise _fail(source, "prompt", f"a mapping with keys among {sorted(PROMPT_FIELDS)}", prompt)
    prompt_format = prompt.get("format", "plain")
    if prompt_format not in PROMPT_FORMATS:
        raise _fail(source, "prompt.format", f"one of {', '.join(PROMPT_FORMATS)}", prompt_format)
    is_extraction = task_type == "extraction"
    if is_extraction and "labels" in raw:
        raise _fail(source, "labels", "absent for an extraction task (use schema)", raw["labels"])
    if not is_extraction and "schema" in raw:
        raise _fail(source, "schema", "absent for a classification task (use labels)", raw["schema"])
    if not is_extraction and "labels" not in raw:
        raise _fail(source, "labels", "present for a classification task", None)
    if is_extraction and "schema" not in raw:
        raise _fail(source, "schema", "present for an extraction task", None)
    return TaskSpec(
        name=_string(raw, "name", source, required=True),
        type=task_type,
        instruction=_string(raw, "instruction", source, required=True).strip(),
        labels=() if is_extraction else _labels(raw["labels"], source),
        schema=_schema(raw["schema"], source) if is_extraction else None,
        text_field=_string(raw, "text_field", source, "text"),
        id_field=_string(raw, "id_field", source, "id"),
        label_field=_string(raw, "label_field", source),
        prompt_format=prompt_format,
        input_prefix=_string(prompt, "input_prefix", f"{source} prompt", "Text:"),
        answer_prefix=_string(prompt, "answer_prefix", f"{source} prompt", "Label:"),
        view_prefixes=_view_prefixes(prompt, source),
    )


def _view_prefixes(prompt: dict, source: str) -> tuple[str, ...]:
    raw = prompt.get("view_prefixes", [])
    answer = prompt.get("answer_prefix", "Label:")
    if (not isinstance(raw, list) or not all(isinstance(p, str) and p.strip() for p in raw)
            or len(set(raw)) != len(raw) or answer in raw):
        raise _fail(source, "prompt.view_prefixes", "a list of distinct non-empty strings, none equal to "
                    "prompt.answer_prefix", raw)
    return tuple(raw)


def load_task(path: str | Path) -> TaskSpec:
    """Read and validate a task spec; a bare name like 'bbc_news' means a bundled task."""
    path = Path(path)
    if not path.exists() and (TASKS_DIR / f"{path.name}.yaml").exists():
        path = TASKS_DIR / f"{path.name}.yaml"
    if not path.exists():
        raise SpecError(f"task spec {path}: file not found (bundled tasks: "
                        f"{', '.join(p.stem for p in sorted(TASKS_DIR.glob('*.yaml')))})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"task spec {path}: not valid YAML: {err}") from None
    return parse_task(raw, str(path))


def with_prompt_format(task: TaskSpec, prompt_format: str) -> TaskSpec:
    """The same task with another prompt format (plain or chat)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    return dataclasses.replace(task, prompt_format=prompt_format)
