"""Structured extraction: a JSON object per item, checked against the task's JSON schema.

Backends that can constrain decoding (the engine's constraint hook and HF's logits processor, both
with xgrammar) are given the schema and produce valid JSON (unless cut by max_tokens). Elsewhere
(OpenAI-compatible servers without guided decoding) the output is validated and, if it fails, the
item is retried with the answer opened as '{'; an item that still fails is recorded with its error
and confidence 0. Every output is validated either way.
"""
from __future__ import annotations

import json

from flagstack.annotate.prompt import PromptBuilder, prompt_hash

TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}


def schema_errors(value, schema: dict, path: str = "$") -> list[str]:
    """Violations of the schema subset used in task specs: type, properties, required, enum, items."""
    errors = []
    kind = schema.get("type")
    expected = TYPES.get(kind)
    if expected and (not isinstance(value, expected) or (kind in ("integer", "number") and isinstance(value, bool))):
        return [f"{path}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if kind == "object":
        errors += [f"{path}: missing required '{k}'" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, f"{path}.{key}")
    if kind == "array" and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def parse_json_object(text: str):
    """The first JSON object in text (a model may add words around it), or raise ValueError."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the output")
    obj, _ = json.JSONDecoder().raw_decode(text[start:])
    if not isinstance(obj, dict):
        raise ValueError("the output is not a JSON object")
    return obj


def extract(items: list[dict], builder: PromptBuilder, backend, demos: list[dict] | None = None,
            max_tokens: int = 256) -> list[dict]:
    """One result row per item: {'id', 'fields', 'valid', 'error', 'confidence', 'model', ...}."""
    schema = builder.task.schema
    demos = demos or []
    prompts = [builder.item_prompts(it["text"], demos)[0] for it in items]
    texts = backend.generate(prompts, max_tokens, json_schema=schema if backend.constrains_json else None)
    rows = []
    for item, prompt, text in zip(items, prompts, texts):
        fields, error = None, ""
        for attempt in range(2):
            try:
                fields = parse_json_object(text)
                problems = schema_errors(fields, schema)
                error = "; ".join(problems)
            except ValueError as err:
                fields, error = None, str(err)
            if not error or backend.constrains_json or attempt == 1:
                break
            opened = prompt + builder.encode(" {")  # retry with the object already opened
            text = "{" + backend.generate([opened], max_tokens)[0]
        rows.append({"id": item["id"], "fields": fields, "valid": not error, "error": error or None,
                     "confidence": 1.0 if not error else 0.0, "demos": [d["id"] for d in demos],
                     "model": backend.model_name, "prompt_hash": prompt_hash(prompt)})
    return rows
