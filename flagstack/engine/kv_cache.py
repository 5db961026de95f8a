"""KV block pool: allocation, block tables, prefix caching by chained block hashes.

A full block is identified by hash(parent block's hash, its token ids), so equal hashes mean equal
prefixes up to that block. Blocks are reference counted; a block whose count drops to zero goes to
the back of the free queue but keeps its contents and hash, so a later request with the same prefix
can take it back (a hit). New allocations take from the front of the queue: the least recently
freed block is evicted first (LRU). Hash hits are confirmed against the stored token ids.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from flagstack.engine.sequence import Sequence

NO_HASH = None


def block_hash(parent: int | None, tokens: tuple[int, ...]) -> int:
    """The chained hash of one full block."""
    return hash((parent, tokens))


@dataclass
class CacheStats:
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of those, found cached
    prompt_tokens_sent: int = 0  # prompt tokens of admitted sequences
    prompt_tokens_computed: int = 0  # prompt tokens that went through the model

    @property
    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


class BlockManager:
    """Owns `num_blocks` blocks of `block_size` token slots and the block table of every sequence."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks} and {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.hashes: list[int | None] = [NO_HASH] * num_blocks
        self.tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.inflight: dict[int, int] = {}  # hash of a prompt block being computed -> seq_id computing it
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.stats = CacheStats()

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        """Share of blocks held by running sequences."""
        return 1.0 - len(self.free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache ---------------------------------------------------------------------------
    def _lookup(self, seq: Sequence, max_tokens: int) -> tuple[list[int], bool]:
        """Cached blocks matching the first full blocks of seq (covering at most max_tokens tokens),
        and whether the first block that missed is being computed by another sequence right now."""
        hits: list[int] = []
        parent: int | None = None
        for i in range(max_tokens // self.block_size):
            tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            h = block_hash(parent, tokens)
            block = self.cached.get(h)
            if block is None or self.tokens[block] != tokens:
                return hits, self.inflight.get(h, seq.seq_id) != seq.seq_id
            hits.append(block)
            parent = h
        return hits, False

    def admit(self, seq: Sequence, max_cached_tokens: int) -> int:
        """Give a new (or preempted) sequence the cached blocks of its prefix; returns tokens reused.

        Call only once can_admit said yes. `max_cached_tokens` caps reuse (at least one token must be
        computed to get logits; prompt logprobs need their rows computed).
        """
        hits = self._lookup(seq, max_cached_tokens)[0] if self.enable_prefix_caching else []
        for block in hits:
            self._take(block)
        seq.block_table = hits
        self._mark_inflight(seq, len(hits))
        seq.num_computed_tokens = seq.num_cached_tokens = len(hits) * self.block_size
        if seq.num_preemptions == 0:  # count each prompt once, not again on recompute
            self.stats.prefix_queries += seq.num_prompt_tokens
            self.stats.prefix_hits += seq.num_cached_tokens
            self.stats.prompt_tokens_sent += seq.num_prompt_tokens
        return seq.num_computed_tokens

    def count_hits(self, seq: Sequence, max_cached_tokens: int) -> tuple[int, int, bool]:
        """For an admission check: (blocks the prefix cache would serve, of which now free, whether
        the next prefix block is in flight: admitting seq after that block is committed saves its compute)."""
        if not self.enable_prefix_caching:
            return 0, 0, False
        hits, in_flight = self._lookup(seq, max_cached_tokens)
        return len(hits), sum(1 for b in hits if self.ref_count[b] == 0), in_flight

    def _mark_inflight(self, seq: Sequence, first: int) -> None:
        """Announce the prompt blocks seq will compute, so equal prompts admitted meanwhile wait for them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        parent = self.hashes[seq.block_table[first - 1]] if first > 0 else None
        for i in range(first, seq.num_prompt_tokens // bs):
            parent = block_hash(parent, tuple(seq.token_ids[i * bs:(i + 1) * bs]))
            if self.inflight.setdefault(parent, seq.seq_id) == seq.seq_id:
                seq.inflight_hashes.append(parent)

    def _clear_inflight(self, seq: Sequence) -> None:
        for h in seq.inflight_hashes:
            if self.inflight.get(h) == seq.seq_id:
                del self.inflight[h]
        seq.inflight_hashes = []

    def share(self, seq: Sequence, source: Sequence, num_tokens: int) -> None:
        """Let seq use source's first full blocks covering num_tokens (n > 1 siblings)."""
        blocks = source.block_table[:num_tokens // self.block_size]
        for block in blocks:
            self._take(block)
        seq.block_table = list(blocks)
        seq.num_computed_tokens = len(blocks) * self.block_size

    def commit_full_blocks(self, seq: Sequence, old_computed: int, new_computed: int) -> None:
        """Register the blocks that a step computing tokens [old_computed, new_computed) filled, under
        their chained hash."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        first, last = old_computed // bs, new_computed // bs
        parent = self.hashes[seq.block_table[first - 1]] if first > 0 else None
        for i in range(first, last):
            block = seq.block_table[i]
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = block_hash(parent, tokens)
            if self.hashes[block] is NO_HASH:
                self.hashes[block], self.tokens[block] = h, tokens
                self.cached.setdefault(h, block)
            if self.inflight.get(h) == seq.seq_id:
                del self.inflight[h]
            parent = h

    # -- allocation -----------------------------------------------------------------------------
    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether seq's table can grow to cover num_new_tokens more computed tokens."""
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return need <= len(self.free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow seq's block table to cover its computed tokens plus num_new_tokens."""
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if need > len(self.free):
            raise RuntimeError(f"KV cache out of blocks: need {need}, {len(self.free)} free")
        for _ in range(need):
            block, _ = self.free.popitem(last=False)
            self._evict(block)
            self.ref_count[block] = 1
            seq.block_table.append(block)

    def free_sequence(self, seq: Sequence) -> None:
        """Drop seq's references; blocks reaching zero go to the back of the free queue (reverse order,
        so a prefix's tail is evicted before its head)."""
        for block in reversed(seq.block_table):
            self.ref_count[block] -= 1
            if self.ref_count[block] == 0:
                if self.hashes[block] is NO_HASH:
                    self.free[block] = None
                    self.free.move_to_end(block, last=False)  # nothing to keep: reuse first
                else:
                    self.free[block] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        self._clear_inflight(seq)

    def _take(self, block: int) -> None:
        if self.ref_count[block] == 0:
            del self.free[block]
        self.ref_count[block] += 1

    def _evict(self, block: int) -> None:
        h = self.hashes[block]
        if h is not NO_HASH:
            if self.cached.get(h) == block:
                del self.cached[h]
            self.hashes[block] = self.tokens[block] = NO_HASH

    def reset_prefix_cache(self) -> None:
        """Forget every cached hash of free blocks (their contents are then simply free)."""
        for block in list(self.free):
            self._evict(block)
