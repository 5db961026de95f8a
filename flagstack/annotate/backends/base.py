"""The small interface every annotation backend offers.

Prompts are token id lists (the prompt builder tokenizes once, so the shared demo prefix is
token-exact across items). Two calls do all the work:
- `score(prompts, candidates)`: the summed log-probability of each candidate token sequence after
  each prompt, shape [len(prompts), len(candidates)];
- `generate(prompts, max_tokens, json_schema)`: greedy text, constrained to the schema when the
  backend can (`constrains_json`), for extraction.
A third, `answer_distribution(prompts, k)`, gives the top-k next-token log-probs after each prompt
(for readouts fitted on the demo pool, annotate/readout.py).
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

@dataclasses.dataclass
class TokenStats:
    """Prompt tokens sent to the model vs the ones it actually computed (the rest came from a cache)."""
    requests: int = 0
    prompt_tokens_sent: int = 0
    prompt_tokens_computed: int = 0

    def as_dict(self) -> dict:
        sent = self.prompt_tokens_sent
        return {"requests": self.requests, "prompt_tokens_sent": sent,
                "prompt_tokens_computed": self.prompt_tokens_computed,
                "cache_hit_rate": 1 - self.prompt_tokens_computed / sent if sent else 0.0}


class Backend(Protocol):
    model_name: str
    tokenizer: object  # a Hugging Face tokenizer: encode(text, add_special_tokens=False), decode, apply_chat_template
    constrains_json: bool

    def score(self, prompts: list[list[int]], candidates: list[list[int]]) -> np.ndarray: ...

    def generate(self, prompts: list[list[int]], max_tokens: int, json_schema: dict | None = None) -> list[str]: ...

    def answer_distribution(self, prompts: list[list[int]], k: int) -> list[dict]: ...

    def stats(self) -> dict: ...


def _check_prompts(prompts: list[list[int]]) -> None:
    if any(not p for p in prompts):
        raise ValueError("prompts must be non-empty token id lists")


def check_score_args(prompts: list[list[int]], candidates: list[list[int]]) -> None:
    """Raise ValueError unless prompts and candidates are non-empty token id lists."""
    if not candidates or any(not c for c in candidates):
        raise ValueError("candidates must be a non-empty list of non-empty token id lists")
    _check_prompts(prompts)


def check_distribution_args(prompts: list[list[int]], k: int) -> None:
    """Raise ValueError unless prompts are non-empty token id lists and k >= 1."""
    if k < 1:
        raise ValueError(f"k (top tokens per distribution) must be >= 1, got {k}")
    _check_prompts(prompts)


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """How many leading tokens two prompts share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
