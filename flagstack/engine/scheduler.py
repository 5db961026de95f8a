"""Continuous batching with chunked prefill and preemption by recompute.

Each step spends a budget of `max_num_batched_tokens` new tokens: running sequences first (decode
tokens before unfinished prompts, in arrival order), then waiting sequences in arrival order, each
taking a chunk of its prompt as large as the budget left (whole prompts only when chunked prefill is
off). When the block pool runs dry, the most recently arrived running sequence is preempted: its
blocks are freed and it goes back to the front of the queue to be recomputed later (its prefix
blocks often survive in the prefix cache).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from flagstack.engine.config import EngineConfig
from flagstack.engine.kv_cache import BlockManager
from flagstack.engine.sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    """The sequences of one step and how many new tokens each computes."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_preempted: int = 0

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def is_decode(self) -> bool:
        return all(n == 1 for n in self.num_new_tokens)


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockManager, max_model_len: int | None = None) -> None:
        self.config, self.blocks, self.max_model_len = config, blocks, max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def max_cached_tokens(self, seq: Sequence) -> int:
        """How much of seq the prefix cache may serve: not its last token (its logits are needed),
        and no prompt row whose logits give a wanted prompt logprob (row p-1 scores token p)."""
        limit = len(seq) - 1
        request = seq.request
        if request.params.prompt_logprobs is not None and not request.prompt_logprobs_done:
            limit = min(limit, request.params.first_scored_prompt_position(seq.num_prompt_tokens) - 1)
        return limit

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        chunked = self.config.enable_chunked_prefill
        bs = self.blocks.block_size
        # decode tokens first so a long prompt never stalls generation
        queue = deque(sorted(self.running, key=lambda s: s.num_uncomputed_tokens != 1))
        kept: list[Sequence] = []
        while queue:
            seq = queue.popleft()
            n = min(seq.num_uncomputed_tokens, budget)
            if n == 0 or (not chunked and n < seq.num_uncomputed_tokens) or seq.ends_with_pending(self.max_model_len):
                kept.append(seq)
                continue
            fits = seq.num_computed_tokens + n <= len(seq.block_table) * bs  # most decode steps
            while not fits and not self.blocks.can_allocate(seq, n):
                victim = queue.pop() if queue else seq
                self._preempt(victim)
                batch.num_preempted += 1
                if victim is seq:
                    break
            else:
                if not fits:
                    self.blocks.allocate(seq, n)
                batch.seqs.append(seq)
                batch.num_new_tokens.append(n)
                budget -= n
                kept.append(seq)
        self.running = kept
        if batch.num_preempted == 0:
            budget = self._admit_waiting(batch, budget)
        return batch

    def _admit_waiting(self, batch: ScheduledBatch, budget: int) -> int:
        """Admit waiting sequences in arrival order while budget, blocks and max_num_seqs allow; one whose
        next prefix block another sequence is computing now is passed over until that block is cached."""
        chunked = self.config.enable_chunked_prefill
        bs = self.blocks.block_size
        i = 0
        while i < len(self.waiting) and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[i]
            if seq.block_table:  # an n > 1 sibling already holding the shared prompt blocks
                hit_blocks, free_hits, in_flight = 0, 0, False
                start = seq.num_computed_tokens
            else:
                hit_blocks, free_hits, in_flight = self.blocks.count_hits(seq, self.max_cached_tokens(seq))
                start = hit_blocks * bs
            if in_flight:
                i += 1
                continue
            n = min(len(seq) - start, budget)
            if not chunked and n < len(seq) - start:
                break
            need = self.blocks.blocks_needed(start + n) - len(seq.block_table) - hit_blocks + free_hits
            if need > self.blocks.num_free_blocks:
                break
            del self.waiting[i]
            if not seq.block_table:
                self.blocks.admit(seq, self.max_cached_tokens(seq))
            self.blocks.allocate(seq, n)
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
        return budget

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.free_sequence(seq)
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def after_launch(self, batch: ScheduledBatch) -> list[int]:
        """Mark the step's tokens computed (the GPU runs them in order, so the next step may build on
        them); returns each sequence's computed count before the step, for commit()."""
        stats = self.blocks.stats
        before = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            old = seq.num_computed_tokens
            before.append(old)
            seq.num_computed_tokens = old + n
            if old < seq.num_prompt_tokens:
                stats.prompt_tokens_computed += min(old + n, seq.num_prompt_tokens) - old
        return before

    def commit(self, batch: ScheduledBatch, before: list[int]) -> None:
        """Once the step's input token ids are all on the host: publish its newly full blocks to the
        prefix cache (not for sequences preempted or finished since the launch)."""
        bs = self.blocks.block_size
        for seq, n, old in zip(batch.seqs, batch.num_new_tokens, before):
            if (old + n) // bs != old // bs and seq.status is Status.RUNNING:  # a block became full
                self.blocks.commit_full_blocks(seq, old, old + n)

    def finish(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence from the queues and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free_sequence(seq)
