"""Prompts as token ids: instruction + demo block (the shared prefix) + the item, in plain or chat form.

Budgets are in tokens. Demos are cut head+tail to `demo_tokens` and packed until the prompt budget
is full; the item gets `query_tokens` per chunk, and a longer item is split into overlapping chunks
(each labeled; the labeler aggregates their probabilities). The prefix for one demo set is
tokenized once and reused, so every item of that demo set starts with exactly the same tokens.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from flagstack.annotate.task import TaskSpec

ORDERS = ("interleave", "nearest_last", "given")
ELLIPSIS = " [...] "


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    max_prompt_tokens: int = 2048  # whole prompt: header + demos + one item chunk + answer prefix
    demo_tokens: int = 200         # each demo's text, cut head+tail
    query_tokens: int = 400        # each item chunk
    overlap: int = 64              # tokens shared by consecutive chunks of a long item
    max_chunks: int = 8            # a longer item keeps its first max_chunks-1 chunks and its last one;
                                   # 1: the item is cut head+tail to query_tokens instead (one prompt)
    order: str = "interleave"      # demo order: labels round-robin, nearest demo last, or as selected

    def __post_init__(self):
        for name in ("max_prompt_tokens", "demo_tokens", "query_tokens", "max_chunks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.overlap < self.query_tokens:
            raise ValueError(f"overlap must be in [0, query_tokens={self.query_tokens}), got {self.overlap}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.query_tokens >= self.max_prompt_tokens:
            raise ValueError(f"query_tokens ({self.query_tokens}) must be below max_prompt_tokens "
                             f"({self.max_prompt_tokens})")


def head_tail(ids: list[int], budget: int, marker: list[int]) -> list[int]:
    """ids cut to at most `budget` tokens: the head and the tail (the head gets the larger half),
    joined by `marker` when anything was dropped."""
    if len(ids) <= budget:
        return list(ids)
    keep = max(budget - len(marker), 0)
    head = (keep + 1) // 2
    return list(ids[:head]) + list(marker)[:budget - keep] + (list(ids[len(ids) - (keep - head):]) if keep > head else [])


def split_chunks(ids: list[int], size: int, overlap: int, max_chunks: int) -> list[list[int]]:
    """Windows of `size` tokens with `overlap` between neighbours covering ids (the last window ends
    at the end); beyond max_chunks, the middle windows are dropped."""
    if len(ids) <= size:
        return [list(ids)]
    stride = size - overlap
    starts = list(range(0, len(ids) - size, stride)) + [len(ids) - size]
    if len(starts) > max_chunks:
        starts = starts[:max_chunks - 1] + starts[-1:]
    return [list(ids[s:s + size]) for s in starts]


def interleave_by_label(demos: list[dict]) -> list[dict]:
    """Demos reordered so labels take turns (round-robin in order of first appearance)."""
    groups: dict = {}
    for demo in demos:
        groups.setdefault(str(demo["gold"]), []).append(demo)
    out, queues = [], list(groups.values())
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def answer_text(gold) -> str:
    """How a demo's gold answer is written: a label name, comma-joined names, or JSON."""
    if isinstance(gold, (list, tuple)):
        return ", ".join(map(str, gold))
    if isinstance(gold, dict):
        return json.dumps(gold, ensure_ascii=False)
    return str(gold)


class PromptBuilder:
    """Builds token-id prompts for one task, tokenizer and budget configuration."""

    def __init__(self, task: TaskSpec, tokenizer, config: PromptConfig = PromptConfig()):
        self.task, self.tokenizer, self.config = task, tokenizer, config
        self.chat = task.prompt_format == "chat"
        self.marker = self.encode(ELLIPSIS)
        self._prefix_cache: dict[tuple, list[int]] = {}
        self._doc_cache: dict[str, list[int]] = {}
        self._demo_cost: dict[str, int] = {}
        # Budget left for demos: everything but the header and one full item chunk with its framing.
        framing = len(self.encode(self._item_text("x", answer=None))) + 8
        self.demo_budget = config.max_prompt_tokens - len(self.prefix([])) - config.query_tokens - framing
        if self.demo_budget < 0:
            raise ValueError(f"max_prompt_tokens ({config.max_prompt_tokens}) leaves no room for the header and "
                             f"one item of query_tokens ({config.query_tokens})")

    def with_answer_prefix(self, prefix: str) -> "PromptBuilder":
        """The same prompts asked with another answer prefix; documents' token ids are shared, not encoded again."""
        other = PromptBuilder(dataclasses.replace(self.task, answer_prefix=prefix), self.tokenizer, self.config)
        other._doc_cache = self._doc_cache
        return other

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def doc_ids(self, text: str) -> list[int]:
        """Token ids of a document (memoized: demos recur across items)."""
        ids = self._doc_cache.get(text)
        if ids is None:
            ids = self._doc_cache[text] = self.encode(text.strip())
        return ids

    def header(self) -> str:
        task = self.task
        lines = [task.instruction]
        if task.labels:
            lines.append("Labels:")
            lines += [f"- {l.name}: {l.description}" if l.description else f"- {l.name}" for l in task.labels]
        if task.schema is not None:
            lines.append("Answer with JSON matching this schema: " + json.dumps(task.schema, ensure_ascii=False))
        return "\n".join(lines)

    def _item_text(self, text: str, answer) -> str:
        # Plain form: "Article: ...\nTopic: label\n\n"; the open item ends right after the answer prefix.
        body = f"{self.task.input_prefix} {text}\n{self.task.answer_prefix}"
        return body if answer is None else f"{body} {answer_text(answer)}\n\n"

    def _cut(self, demo: dict) -> str:
        return self.tokenizer.decode(head_tail(self.doc_ids(demo["text"]), self.config.demo_tokens, self.marker))

    def _messages(self, demos: list[dict]) -> list[dict]:
        messages = [{"role": "system", "content": self.header()}]
        for demo in demos:
            messages += [{"role": "user", "content": f"{self.task.input_prefix} {self._cut(demo)}"},
                         {"role": "assistant", "content": answer_text(demo["gold"])}]
        return messages

    def pack(self, demos: list[dict]) -> list[dict]:
        """The demos (in selection order) that fit the demo budget, then put in the configured order."""
        packed, used = [], 0
        for demo in demos:
            cost = self._demo_cost.get(demo["id"])
            if cost is None:  # exact in plain form; chat adds a few role tokens, inside the framing slack
                cost = self._demo_cost[demo["id"]] = len(self.encode(self._item_text(self._cut(demo), demo["gold"])))
            if used + cost > self.demo_budget:
                break
            packed.append(demo)
            used += cost
        if self.config.order == "interleave":
            return interleave_by_label(packed)
        if self.config.order == "nearest_last":  # selectors rank nearest first; the model sees it last
            return packed[::-1]
        return packed

    def prefix(self, demos: list[dict]) -> list[int]:
        """Token ids of the header and demo block: the part shared by every item using these demos."""
        key = tuple(d["id"] for d in demos)
        ids = self._prefix_cache.get(key)
        if ids is None:
            if self.chat:
                text = self.tokenizer.apply_chat_template(self._messages(demos), tokenize=False)
            else:
                text = self.header() + "\n\n" + "".join(self._item_text(self._cut(d), d["gold"]) for d in demos)
            ids = self._prefix_cache[key] = self.encode(text)
        return ids

    def _query_ids(self, demos: list[dict], chunk_text: str) -> list[int]:
        if not self.chat:
            return self.encode(self._item_text(chunk_text, answer=None))
        prefix_text = self.tokenizer.apply_chat_template(self._messages(demos), tokenize=False)
        messages = self._messages(demos) + [{"role": "user", "content": f"{self.task.input_prefix} {chunk_text}"}]
        full = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not full.startswith(prefix_text):
            raise ValueError("the chat template does not extend a conversation by appending; use prompt format plain")
        return self.encode(full[len(prefix_text):])

    def item_prompts(self, text: str, demos: list[dict]) -> list[list[int]]:
        """One prompt per chunk of the item: the shared prefix followed by that chunk."""
        prefix = self.prefix(demos)
        ids, cfg = self.doc_ids(text), self.config
        # One chunk allowed: keep the head (a news item's title and lead) and the tail, like a demo.
        chunks = ([head_tail(ids, cfg.query_tokens, self.marker)] if cfg.max_chunks == 1
                  else split_chunks(ids, cfg.query_tokens, cfg.overlap, cfg.max_chunks))
        return [prefix + self._query_ids(demos, self.tokenizer.decode(c)) for c in chunks]

    def candidates(self) -> list[list[int]]:
        """Each label's token sequence as it follows the answer prefix (after a space in plain form)."""
        sep = "" if self.chat else " "
        return [self.encode(sep + name) for name in self.task.label_names]

    def content_free_prompt(self, demos: list[dict]) -> list[int]:
        """The prompt with a content-free item ('N/A'), for contextual calibration."""
        return self.prefix(demos) + self._query_ids(demos, "N/A")


def prompt_hash(ids: list[int]) -> str:
    """A short stable hash of a prompt's token ids (recorded with every result)."""
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
