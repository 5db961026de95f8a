"""Paged decode attention: one query token per sequence over its whole cached context.

q [S, Hq, D]; seq_lens [S] = context length including the token just stored; block_tables
[S, max_blocks]. Memory traffic: read each sequence's K and V once (2 * sum(seq_lens) * Hkv * D
elements), which is why GQA heads of one group must share each page load.
"""
from __future__ import annotations

import torch

from flagstack.ops.attention.varlen import attend
from flagstack.ops.registry import register


def paged_decode_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float,
                           sliding_window: int | None = None,
                           softcap: float | None = None) -> torch.Tensor:
    """Decode attention for a batch in one shot: pages gathered and padded to the longest context."""
    if q.shape[0] == 0:
        return torch.empty_like(q)
    block_size = k_cache.shape[1]
    max_len = int(seq_lens.max())
    n_blocks = (max_len + block_size - 1) // block_size
    pages = block_tables[:, :n_blocks].long()
    k = k_cache[pages].flatten(1, 2)[:, :max_len]  # [S, L, Hkv, D]
    v = v_cache[pages].flatten(1, 2)[:, :max_len]
    k_pos = torch.arange(max_len, device=q.device)[None, :]
    last = (seq_lens.long() - 1)[:, None]
    mask = k_pos <= last
    if sliding_window is not None:
        mask &= k_pos > last - sliding_window
    o = attend(q[:, :, None], k.transpose(1, 2), v.transpose(1, 2), mask[:, None, None, :], scale, softcap)
    return o[:, :, 0].to(q.dtype)


paged_decode = register("paged_decode", reference=paged_decode_reference)
