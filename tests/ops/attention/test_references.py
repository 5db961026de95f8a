"""The PyTorch references themselves, against SDPA / hand-written float64 math on contiguous K/V."""
import math

import pytest
import torch
import torch.nn.functional as F

from flagstack.ops.attention.kv_write import store_kv_reference
from flagstack.ops.attention.paged_decode import paged_decode_reference
from flagstack.ops.attention.varlen import varlen_attention_reference
from tests.ops.attention.paging import build_paged
from tests.ops.helpers import DEVICE, assert_close


def manual_attention(q, k, v, q_positions, scale, window=None, softcap=None):
    """float64 attention of q [n, Hq, D] at q_positions over contiguous k/v [L, Hkv, D], by hand."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    pos_q = torch.as_tensor(q_positions, device=q.device)[:, None]
    pos_k = torch.arange(k.shape[0], device=q.device)[None, :]
    visible = pos_k <= pos_q
    if window is not None:
        visible &= pos_k > pos_q - window
    scores = scores.masked_fill(~visible, -math.inf)
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


@pytest.mark.parametrize("group", [1, 4])
def test_decode_reference_matches_sdpa(group):
    lens = [1, 15, 16, 17, 45]
    batch = build_paged(lens, 2, 64, 16, torch.float32, shared_blocks=0)
    q = torch.randn(len(lens), 2 * group, 64, device=DEVICE)
    out = paged_decode_reference(q, batch.k_cache, batch.v_cache, batch.seq_lens, batch.block_tables, 0.125)
    for s, n in enumerate(lens):
        k, v = batch.keys[s].transpose(0, 1)[None], batch.values[s].transpose(0, 1)[None]
        expected = F.scaled_dot_product_attention(q[s][None, :, None], k, v, scale=0.125, enable_gqa=True)
        assert_close(out[s], expected[0, :, 0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_reference_mixed_lengths_half_cache_by_hand(dtype):
    # lengths this uneven take the one-sequence-at-a-time path: per-sequence gathers into shared
    # buffers (a long sequence first, then shorter ones: stale pages must not leak in), group of 3
    lens = [70, 1, 33, 16, 5]
    batch = build_paged(lens, 2, 32, 16, dtype, shared_blocks=0)
    q = torch.randn(len(lens), 6, 32, device=DEVICE).to(dtype)
    out = paged_decode_reference(q, batch.k_cache, batch.v_cache, batch.seq_lens, batch.block_tables, 0.2)
    for s, n in enumerate(lens):
        expected = manual_attention(q[s:s + 1], batch.keys[s], batch.values[s], [n - 1], 0.2)
        assert_close(out[s:s + 1], expected.to(dtype))


@pytest.mark.parametrize("window, softcap", [(5, None), (None, 3.0), (20, 2.0)])
def test_decode_reference_window_softcap(window, softcap):
    lens = [3, 16, 40]
    batch = build_paged(lens, 1, 32, 16, torch.float32, shared_blocks=0)
    q = torch.randn(len(lens), 4, 32, device=DEVICE)
    out = paged_decode_reference(q, batch.k_cache, batch.v_cache, batch.seq_lens, batch.block_tables,
                                 0.2, window, softcap)
    for s, n in enumerate(lens):
        expected = manual_attention(q[s:s + 1], batch.keys[s], batch.values[s], [n - 1], 0.2, window, softcap)
        assert_close(out[s:s + 1], expected.float())


def test_varlen_reference_matches_sdpa_with_prefix():
    lens, news = [20, 33, 7, 16], [20, 9, 1, 0]  # full prefill, extend over a cached prefix, decode, idle
    batch = build_paged(lens, 2, 64, 8, torch.float32, shared_blocks=0)
    q = torch.randn(sum(news), 8, 64, device=DEVICE)
    cu = torch.tensor([0] + news, device=DEVICE).cumsum(0).to(torch.int32)
    out = varlen_attention_reference(q, batch.k_cache, batch.v_cache, cu, batch.seq_lens,
                                     batch.block_tables, 0.125)
    for s, (n, new) in enumerate(zip(lens, news)):
        if new == 0:
            continue
        q_s = q[cu[s]:cu[s + 1]].transpose(0, 1)[None]
        k, v = batch.keys[s].transpose(0, 1)[None], batch.values[s].transpose(0, 1)[None]
        mask = torch.ones(new, n, dtype=torch.bool, device=DEVICE).tril(n - new)
        expected = F.scaled_dot_product_attention(q_s, k, v, attn_mask=mask, scale=0.125, enable_gqa=True)
        assert_close(out[cu[s]:cu[s + 1]], expected[0].transpose(0, 1))


def test_varlen_reference_window_softcap_by_hand():
    lens, news = [30, 12], [11, 12]
    batch = build_paged(lens, 1, 16, 16, torch.float32, shared_blocks=0)
    q = torch.randn(sum(news), 2, 16, device=DEVICE)
    cu = torch.tensor([0] + news, device=DEVICE).cumsum(0).to(torch.int32)
    out = varlen_attention_reference(q, batch.k_cache, batch.v_cache, cu, batch.seq_lens,
                                     batch.block_tables, 0.3, 6, 4.0)
    for s, (n, new) in enumerate(zip(lens, news)):
        expected = manual_attention(q[cu[s]:cu[s + 1]], batch.keys[s], batch.values[s],
                                    list(range(n - new, n)), 0.3, 6, 4.0)
        assert_close(out[cu[s]:cu[s + 1]], expected.float())


def test_store_kv_reference_by_hand():
    k_cache = torch.zeros(3, 4, 2, 8)
    v_cache = torch.zeros(3, 4, 2, 8)
    key, value = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    store_kv_reference(key, value, k_cache, v_cache, torch.tensor([9, -1, 0]))
    assert torch.equal(k_cache[2, 1], key[0]) and torch.equal(v_cache[0, 0], value[2])
    assert k_cache.count_nonzero() == 2 * 2 * 8 and v_cache.count_nonzero() == 2 * 2 * 8
