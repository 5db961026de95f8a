"""Test doubles: a byte-level tokenizer and a backend whose label scores are hand-computable."""
from __future__ import annotations

import collections

import numpy as np


class ByteTokenizer:
    """One token per UTF-8 byte: exact round trips, so token budgets are character budgets."""

    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


class KeywordBackend:
    """Scores a label by how often its name occurs in the prompt's last item (after the last
    'Text:'), plus a fixed per-label bias; it can be told to crash after some prompts."""

    constrains_json = False
    model_name = "fake"

    def __init__(self, bias: dict | None = None, crash_after: int | None = None):
        self.tokenizer = ByteTokenizer()
        self.bias = bias or {}
        self.crash_after = crash_after
        self.prompts_seen = 0

    def score(self, prompts, candidates):
        out = np.zeros((len(prompts), len(candidates)))
        for i, p in enumerate(prompts):
            self.prompts_seen += 1
            if self.crash_after is not None and self.prompts_seen > self.crash_after:
                raise RuntimeError("simulated crash")
            item = self.tokenizer.decode(p).rsplit("Text:", 1)[-1]
            for j, c in enumerate(candidates):
                name = self.tokenizer.decode(c).strip()
                out[i, j] = item.count(name) + self.bias.get(name, 0.0)
        return out

    def answer_distribution(self, prompts, k):
        """The words of the prompt's last item, each with log(its share of the item's words); top k."""
        out = []
        for p in prompts:
            self.prompts_seen += 1
            words = collections.Counter(self.tokenizer.decode(p).rsplit("Text:", 1)[-1].split()[:-1])  # minus 'Label:'
            total = sum(words.values())
            out.append({w: float(np.log(n / total)) for w, n in words.most_common(k)})
        return out

    def generate(self, prompts, max_tokens, json_schema=None):
        return ['{"name": "x"}' for _ in prompts]

    def stats(self):
        return {"requests": self.prompts_seen, "prompt_tokens_sent": 0, "prompt_tokens_computed": 0,
                "cache_hit_rate": 0.0}


def toy_task(**overrides):
    from flagstack.annotate.task import parse_task

    raw = {"name": "toy", "instruction": "Pick the fruit.", "label_field": "label",
           "labels": {"apple": "red", "banana": "yellow", "cherry": ""}}
    raw.update(overrides)
    return parse_task(raw)


def toy_items(n: int, prefix: str = "t") -> list[dict]:
    names = ["apple", "banana", "cherry"]
    return [{"id": f"{prefix}{i}", "text": f"this is about {names[i % 3]} and {names[i % 3]}", "gold": names[i % 3]}
            for i in range(n)]
