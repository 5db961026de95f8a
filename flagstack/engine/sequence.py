"""Request and sequence state: token ids, KV blocks held, progress of the prompt, outputs so far.

A request with n > 1 has n sequences; the first computes the prompt, the others then take its full
prompt blocks (shared by reference count) and compute only the last partial block themselves.
"""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import torch

from flagstack.engine.config import SamplingParams
from flagstack.engine.tokenizer import fast_decoder


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


Logprobs = dict[int, float]  # token id -> logprob


@dataclass
class Request:
    """What the user sent, plus results shared by the request's sequences."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival: float
    prompt_logprobs: list[Logprobs | None] | None = None
    prompt_logprobs_done: bool = False  # every wanted prompt row scored (the cache may serve them now)
    sequences: list["Sequence"] = field(default_factory=list)
    first_token_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(s.status is Status.FINISHED for s in self.sequences)


_seq_ids = itertools.count()


class Sequence:
    """One completion: the prompt plus its generated tokens, and the KV blocks that hold them."""

    def __init__(self, request: Request, index: int, generator: torch.Generator | None) -> None:
        self.seq_id = next(_seq_ids)
        self.request, self.index, self.generator = request, index, generator
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.status = Status.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        # tokens sampled on the GPU whose ids the host has not read yet (the engine schedules and
        # launches the next step first): they count in len(seq), not in token_ids
        self.num_pending = 0
        self.num_cached_tokens = 0  # of those, served by the prefix cache at admission
        self.num_preemptions = 0
        self.inflight_hashes: list[int] = []  # prompt blocks this sequence announced it is computing
        self.parent: Sequence | None = None  # n > 1: the sibling that computes the shared prompt
        self.logprobs: list[Logprobs] | None = [] if request.params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.text = ""
        self.detok = IncrementalDetokenizer(self.num_prompt_tokens)
        factory = request.params.constraint_factory
        self.constraint = factory() if factory is not None else None  # structured output state

    def __len__(self) -> int:
        return len(self.token_ids) + self.num_pending

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self) - self.num_computed_tokens

    @property
    def needs_host_tokens(self) -> bool:
        """Its next step needs the ids of every token so far on the host (penalties count them, a grammar
        advances on them), so the engine cannot launch that step before reading the last one back."""
        return self.params.has_penalties or self.constraint is not None

    def reaches_length_limit(self, max_model_len: int | None, pending: int = 0) -> bool:
        """Whether its tokens, plus `pending` more, reach max_tokens or the context (it ends by length)."""
        limit = self.params.max_tokens
        return ((limit is not None and self.num_output_tokens + pending >= limit)
                or (max_model_len is not None and len(self.token_ids) + pending >= max_model_len))

    def ends_with_pending(self, max_model_len: int | None) -> bool:
        """Its pending token is certain to end it (max_tokens or the context reached): nothing to schedule."""
        return self.num_pending > 0 and self.reaches_length_limit(max_model_len, self.num_pending)

    @property
    def in_prompt(self) -> bool:
        """True while the original prompt is not fully in the cache (prompt logprobs are due)."""
        return self.num_computed_tokens < self.num_prompt_tokens

    def finish(self, reason: str, stop_reason: int | str | None = None) -> None:
        self.status, self.finish_reason, self.stop_reason = Status.FINISHED, reason, stop_reason


class IncrementalDetokenizer:
    """Text of the output tokens, decoded a short window at a time (not the whole output per token).

    Keeps two offsets into the token list: text before `read` is final; decoding from `prefix` gives
    the context a tokenizer needs to place spaces right. A delta ending in U+FFFD (a UTF-8 character
    cut in the middle) is held back until the next token completes it.
    """

    def __init__(self, start: int) -> None:
        self.prefix = self.read = start

    def step(self, tokenizer, token_ids: list[int], skip_special_tokens: bool) -> str:
        """The new text that the tokens past `read` add."""
        decode = fast_decoder(tokenizer)
        before = decode(token_ids[self.prefix:self.read], skip_special_tokens=skip_special_tokens)
        after = decode(token_ids[self.prefix:], skip_special_tokens=skip_special_tokens)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(token_ids)
        return after[len(before):]
