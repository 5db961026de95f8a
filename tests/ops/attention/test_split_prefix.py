"""The CPU varlen reference's split path (new tokens over a cached prefix + over themselves, merged by
log-sum-exp) against hand-written float64 masked softmax attention."""
import pytest
import torch

from flagstack.ops.attention.varlen import attend_after_prefix, varlen_attention_reference
from tests.ops.attention.paging import build_paged
from tests.ops.attention.test_references import manual_attention
from tests.ops.helpers import assert_close


def run_varlen(lens, news, q_heads, kv_heads, head_dim, block_size, split, monkeypatch, shared_blocks=0):
    """(out, batch, q, cu) of the reference with the split on or off, on CPU."""
    monkeypatch.setenv("FLAGSTACK_SPLIT_PREFIX", "1" if split else "0")
    batch = build_paged(lens, kv_heads, head_dim, block_size, torch.float32, shared_blocks, device="cpu")
    q = torch.randn(sum(news), q_heads, head_dim)
    cu = torch.tensor([0] + news).cumsum(0).to(torch.int32)
    out = varlen_attention_reference(q, batch.k_cache, batch.v_cache, cu, batch.seq_lens, batch.block_tables,
                                     head_dim ** -0.5)
    return out, batch, q, cu


# whole prompt (no cached prefix), extend over a block-aligned and an unaligned prefix, a single new
# token after a prefix, an extend of 2, an idle sequence
LENS, NEWS = [21, 48, 37, 30, 9, 5], [21, 16, 11, 1, 2, 0]


@pytest.mark.parametrize("q_heads, kv_heads", [(4, 4), (9, 3), (8, 1)])  # MHA, SmolLM2's GQA, MQA
@pytest.mark.parametrize("split", [True, False])
def test_varlen_reference_matches_float64_by_hand(q_heads, kv_heads, split, monkeypatch):
    torch.manual_seed(q_heads + kv_heads)
    out, batch, q, cu = run_varlen(LENS, NEWS, q_heads, kv_heads, 32, 16, split, monkeypatch)
    for s, (n, new) in enumerate(zip(LENS, NEWS)):
        if new:
            expected = manual_attention(q[cu[s]:cu[s + 1]], batch.keys[s], batch.values[s],
                                        list(range(n - new, n)), 32 ** -0.5)
            assert_close(out[cu[s]:cu[s + 1]], expected.float())


def test_split_and_masked_paths_agree_on_shared_prefix_pages(monkeypatch):
    torch.manual_seed(0)
    lens, news = [70, 52, 40], [30, 12, 7]
    split, *_ = run_varlen(lens, news, 6, 2, 64, 16, True, monkeypatch, shared_blocks=2)
    torch.manual_seed(0)
    masked, *_ = run_varlen(lens, news, 6, 2, 64, 16, False, monkeypatch, shared_blocks=2)
    assert_close(split, masked)


@pytest.mark.parametrize("cached, new", [(1, 1), (1, 5), (13, 1), (64, 40)])
def test_attend_after_prefix_by_hand(cached, new):
    """Edge sizes: one-token prefix, one new token (its causal part is the token itself)."""
    torch.manual_seed(cached * 100 + new)
    q = torch.randn(new, 6, 16)
    k, v = torch.randn(cached + new, 3, 16), torch.randn(cached + new, 3, 16)
    out = attend_after_prefix(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                              cached, 0.3)
    expected = manual_attention(q, k, v, list(range(cached, cached + new)), 0.3)
    assert out.shape == (1, 6, new, 16)
    assert_close(out[0].transpose(0, 1), expected.float())


def test_attend_after_prefix_large_score_gap():
    """Prefix scores far above the new ones: the merge weight saturates without inf/nan."""
    q = torch.full((3, 2, 8), 4.0)
    k = torch.cat([torch.full((5, 1, 8), 4.0), torch.full((3, 1, 8), -4.0)])
    v = torch.randn(8, 1, 8)
    out = attend_after_prefix(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], 5, 1.0)
    expected = manual_attention(q, k, v, [5, 6, 7], 1.0)
    assert torch.isfinite(out).all()
    assert_close(out[0].transpose(0, 1), expected.float())
