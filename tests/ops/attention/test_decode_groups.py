"""The decode reference's grouped path (sequences of similar lengths share one SDPA call) against
hand-written float64 attention, and the grouping rule itself."""
import sys

import pytest
import torch

from flagstack.ops.attention.paged_decode import length_groups, paged_decode_reference
from tests.ops.attention.paging import build_paged
from tests.ops.attention.test_references import manual_attention
from tests.ops.helpers import assert_close

decode_module = sys.modules["flagstack.ops.attention.paged_decode"]


def test_length_groups_by_hand():
    # sorted: 1 (idx 2), 10 (0), 11 (3), 12 (1), 40 (4); 1 alone would pad 10 -> 20 > 4/3 of 11
    assert length_groups([10, 12, 1, 11, 40]) == [[2], [0, 3, 1], [4]]
    assert length_groups([5] * 19) == [list(range(8)), list(range(8, 16)), list(range(16, 19))]


def test_length_groups_bounds():
    lens = torch.randint(1, 700, (61,), generator=torch.Generator().manual_seed(1)).tolist()
    groups = length_groups(lens, most=6)
    assert sorted(s for g in groups for s in g) == list(range(61))
    for g in groups:
        assert 1 <= len(g) <= 6 and [lens[s] for s in g] == sorted(lens[s] for s in g)
        assert 3 * len(g) * lens[g[-1]] <= 4 * sum(lens[s] for s in g)


@pytest.mark.parametrize("q_heads, kv_heads", [(9, 3), (4, 4), (8, 1)])
def test_grouped_decode_matches_float64_by_hand(q_heads, kv_heads, monkeypatch):
    """Mixed lengths (the grouped path): several groups, unequal lengths inside a group, a 1-token context."""
    monkeypatch.setattr(decode_module, "DECODE_GROUP_SEQS", 3)
    torch.manual_seed(q_heads)
    lens = [1, 3, 16, 17, 18, 33, 60, 64, 65, 90, 130]
    assert 3 * len(lens) * max(lens) > 4 * sum(lens)  # not the one-shot padded path
    batch = build_paged(lens, kv_heads, 32, 16, torch.float32, device="cpu")
    q = torch.randn(len(lens), q_heads, 32)
    out = paged_decode_reference(q, batch.k_cache, batch.v_cache, batch.seq_lens, batch.block_tables, 0.2)
    for s, n in enumerate(lens):
        expected = manual_attention(q[s:s + 1], batch.keys[s], batch.values[s], [n - 1], 0.2)
        assert_close(out[s:s + 1], expected.float())
