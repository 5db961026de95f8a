"""Block pool: allocation and reference counts, chained-hash prefix hits, LRU eviction, hit accounting."""
import pytest

from flagstack.engine.config import SamplingParams
from flagstack.engine.kv_cache import BlockManager
from flagstack.engine.sequence import Request, Sequence


def make_seq(tokens: list[int], params: SamplingParams | None = None) -> Sequence:
    request = Request("r", None, list(tokens), params or SamplingParams(), 0.0)
    seq = Sequence(request, 0, None)
    request.sequences.append(seq)
    return seq


def compute(blocks: BlockManager, seq: Sequence, n: int) -> None:
    """What the scheduler does for a step of n tokens: grow the table, mark computed, publish full blocks."""
    blocks.allocate(seq, n)
    old = seq.num_computed_tokens
    seq.num_computed_tokens += n
    blocks.commit_full_blocks(seq, old, old + n)


def test_allocate_and_free_counts():
    blocks = BlockManager(8, 4)
    seq = make_seq(list(range(10)))
    assert blocks.can_allocate(seq, 10) and not blocks.can_allocate(seq, 33)
    compute(blocks, seq, 10)
    assert len(seq.block_table) == 3 and blocks.num_free_blocks == 5
    compute(blocks, seq, 2)  # 12 tokens still fit 3 blocks
    assert len(seq.block_table) == 3
    blocks.free_sequence(seq)
    assert blocks.num_free_blocks == 8 and seq.block_table == [] and blocks.usage == 0.0
    with pytest.raises(RuntimeError, match="out of blocks"):
        blocks.allocate(make_seq([1]), 33)
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(0, 4)


def test_prefix_hit_reuses_blocks_and_counts():
    blocks = BlockManager(8, 4)
    a = make_seq(list(range(10)))
    compute(blocks, a, 10)
    first_two = a.block_table[:2]
    blocks.free_sequence(a)
    b = make_seq(list(range(8)) + [50, 51, 52])
    assert blocks.count_hits(b, len(b) - 1) == (2, 2, False)  # two full blocks, both free now
    assert blocks.admit(b, len(b) - 1) == 8
    assert b.block_table == first_two and b.num_cached_tokens == 8
    assert blocks.stats.prefix_queries == 11 and blocks.stats.prefix_hits == 8
    assert blocks.stats.hit_rate == pytest.approx(8 / 11)
    # a live sequence shares the same blocks: counts go to 2, one free leaves them held
    c = make_seq(list(range(8)) + [60])
    blocks.admit(c, len(c) - 1)
    assert c.block_table == first_two and blocks.ref_count[first_two[0]] == 2
    blocks.free_sequence(b)
    assert blocks.ref_count[first_two[0]] == 1 and first_two[0] not in blocks.free


def test_hash_is_chained_and_capped():
    blocks = BlockManager(8, 4)
    a = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    compute(blocks, a, 9)
    blocks.free_sequence(a)
    # same second block, different first block: no hit at all
    assert blocks.count_hits(make_seq([0, 2, 3, 4, 5, 6, 7, 8, 9]), 8)[0] == 0
    # the cap: a prompt that is exactly 2 full cached blocks may reuse only 1 (its last token is computed)
    exact = make_seq([1, 2, 3, 4, 5, 6, 7, 8])
    assert blocks.count_hits(exact, len(exact) - 1)[0] == 1
    assert blocks.count_hits(exact, 3)[0] == 0
    off = BlockManager(8, 4, enable_prefix_caching=False)
    compute(off, a := make_seq([1, 2, 3, 4, 5]), 5)
    off.free_sequence(a)
    assert off.admit(make_seq([1, 2, 3, 4, 5]), 4) == 0


def test_lru_eviction_of_free_cached_blocks():
    blocks = BlockManager(4, 2)
    old, new = make_seq([1, 2, 3, 4]), make_seq([5, 6, 7, 8])
    compute(blocks, old, 4)
    compute(blocks, new, 4)
    blocks.free_sequence(old)  # freed first: evicted first
    blocks.free_sequence(new)
    taker = make_seq([9, 9, 9, 9])
    compute(blocks, taker, 2)  # takes one block: the tail of the older prefix
    assert blocks.count_hits(make_seq([1, 2, 3, 4, 0]), 4)[0] == 1  # head of `old` still cached
    assert blocks.count_hits(make_seq([5, 6, 7, 8, 0]), 4)[0] == 2
    compute(blocks, taker, 2)
    assert blocks.count_hits(make_seq([1, 2, 3, 4, 0]), 4)[0] == 0
    assert blocks.count_hits(make_seq([5, 6, 7, 8, 0]), 4)[0] == 2
    blocks.reset_prefix_cache()
    assert blocks.count_hits(make_seq([5, 6, 7, 8, 0]), 4)[0] == 0


def test_uncached_free_blocks_are_reused_before_cached_ones():
    blocks = BlockManager(3, 2)
    cached = make_seq([1, 2])
    compute(blocks, cached, 2)
    partial = make_seq([3])
    compute(blocks, partial, 1)  # a partial block: no hash
    blocks.free_sequence(cached)
    blocks.free_sequence(partial)
    compute(blocks, make_seq([7, 7, 7, 7]), 4)  # two blocks: the never-used one and the partial one
    assert blocks.count_hits(make_seq([1, 2, 0]), 2)[0] == 1


def test_share_for_siblings():
    blocks = BlockManager(8, 4)
    first = make_seq(list(range(10)))
    compute(blocks, first, 10)
    sibling = make_seq(list(range(10)))
    blocks.share(sibling, first, 9)
    assert sibling.block_table == first.block_table[:2] and sibling.num_computed_tokens == 8
    assert blocks.ref_count[first.block_table[0]] == 2


def test_in_flight_prefix_blocks():
    blocks = BlockManager(16, 4)
    first, same = make_seq(list(range(10))), make_seq(list(range(9)) + [99])
    assert blocks.count_hits(same, 9) == (0, 0, False)
    blocks.admit(first, 9)
    blocks.allocate(first, 10)
    assert blocks.count_hits(same, 9) == (0, 0, True)  # first is computing the same 2 full blocks
    assert blocks.count_hits(first, 9)[2] is False  # a sequence never waits for itself
    first.num_computed_tokens = 10
    blocks.commit_full_blocks(first, 0, 10)
    assert blocks.count_hits(same, 9) == (2, 0, False) and blocks.inflight == {}
    other = make_seq([50] * 10)
    blocks.admit(other, 9)
    blocks.free_sequence(other)  # preempted or aborted before computing: nobody waits for it
    assert blocks.inflight == {}
