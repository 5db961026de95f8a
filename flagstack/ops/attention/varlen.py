"""Varlen attention over the paged cache: each sequence's new queries attend causally to its own
new tokens and fully to its cached prefix (prefill, chunked prefill, prefix-cache hits, and decode
rows in the same batch).

Inputs: q [T, Hq, D] packed by sequence; cu_seqlens_q [S+1] int32 (query offsets); seq_lens [S]
int32 = total KV length of each sequence including the new tokens (already stored in the cache);
block_tables [S, max_blocks] int32. The new queries of sequence s are its last
(cu_seqlens_q[s+1] - cu_seqlens_q[s]) positions. GQA: Hq must be a multiple of Hkv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flagstack.ops.registry import register


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence's pages, as a contiguous [length, Hkv, D] tensor."""
    block_size = cache.shape[1]
    n_blocks = (length + block_size - 1) // block_size
    return cache[block_table[:n_blocks].long()].reshape(-1, *cache.shape[2:])[:length]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
           softcap: float | None) -> torch.Tensor:
    """fp32 attention of q [B, Hq, Lq, D] over k/v [B, Hkv, Lk, D] with a boolean keep-mask."""
    q, k, v = q.float(), k.float(), v.float()
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = softcap * torch.tanh((q @ k.transpose(-1, -2)) * scale / softcap)
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def varlen_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                               block_tables: torch.Tensor, scale: float,
                               sliding_window: int | None = None,
                               softcap: float | None = None) -> torch.Tensor:
    """Causal attention of packed new queries over each sequence's cached K/V; returns [T, Hq, D]."""
    out = torch.empty_like(q)
    starts, lens = cu_seqlens_q.tolist(), seq_lens.tolist()
    for s, kv_len in enumerate(lens):
        q_s = q[starts[s]:starts[s + 1]]
        n_new = q_s.shape[0]
        if n_new == 0:
            continue
        k = gather_kv(k_cache, block_tables[s], kv_len)
        v = gather_kv(v_cache, block_tables[s], kv_len)
        q_pos = torch.arange(kv_len - n_new, kv_len, device=q.device)[:, None]
        k_pos = torch.arange(kv_len, device=q.device)[None, :]
        mask = k_pos <= q_pos
        if sliding_window is not None:
            mask &= k_pos > q_pos - sliding_window
        o = attend(q_s.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                   mask, scale, softcap)
        out[starts[s]:starts[s + 1]] = o[0].transpose(0, 1).to(q.dtype)
    return out


varlen_attention = register("varlen_attention", reference=varlen_attention_reference)
