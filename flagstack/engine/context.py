"""The per-step attention metadata the runner sets and every attention layer reads.

One step runs a packed batch of T new tokens from S sequences (prefill chunks and decode tokens
mixed). The runner fills an `AttentionMetadata`, calls `set_context`, runs the model, and clears it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token (-1: padding, not stored)
    cu_seqlens_q: torch.Tensor  # [S+1] int32: where each sequence's new tokens start in the batch
    seq_lens: torch.Tensor  # [S] int32: KV length of each sequence after this step (cached + new)
    block_tables: torch.Tensor  # [S, max_blocks] int32: the pages of each sequence, in order
    max_query_len: int  # longest run of new tokens in one sequence (1 means a pure decode step)
    max_seq_len: int
    # When the step reads only some rows (see CausalLM.forward's `rows`), the last layer's queries are
    # those rows, each the last new token of its sequence: this metadata describes them as decode rows.
    rows_meta: AttentionMetadata | None = None

    @property
    def is_decode(self) -> bool:
        """True when every sequence brings exactly one new token (paged decode kernel)."""
        return self.max_query_len == 1


_current: AttentionMetadata | None = None


def set_context(meta: AttentionMetadata | None) -> None:
    """Install the metadata for the forward pass about to run (None clears it)."""
    global _current
    _current = meta


def get_context() -> AttentionMetadata:
    """The metadata of the running step; errors clearly when a model runs outside a step."""
    if _current is None:
        raise RuntimeError("attention called outside an engine step: no AttentionMetadata is set")
    return _current


@contextlib.contextmanager
def step_context(meta: AttentionMetadata) -> Iterator[AttentionMetadata]:
    """Set the metadata for the duration of one forward pass."""
    set_context(meta)
    try:
        yield meta
    finally:
        set_context(None)
