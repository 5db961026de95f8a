"""Paged attention layer shared by the model files: store the new K/V, then attend over the cache."""
from __future__ import annotations

import torch
from torch import nn

from flagstack.engine.context import get_context
from flagstack.ops import attention as attn_ops


class PagedAttention(nn.Module):
    """Attention of packed q/k/v [T, heads, head_dim] over this layer's paged KV cache.

    The runner assigns `k_cache` / `v_cache` ([num_blocks, block_size, Hkv, D]) after it sizes the
    block pool; a layer without a cache cannot run. An fp8 cache is written and read with the per-tensor
    `k_scale` / `v_scale` (1.0 unless calibrated scales are set).
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                 sliding_window: int | None = None, softcap: float | None = None) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale, self.sliding_window, self.softcap = scale, sliding_window, softcap
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self.k_scale = self.v_scale = 1.0

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store every new k/v row; attend q's rows: all the step's new tokens, or fewer rows, each the
        last new token of its sequence (the step's `rows_meta` then describes them)."""
        meta = get_context()
        if self.k_cache is None or self.v_cache is None:
            raise RuntimeError("PagedAttention has no KV cache: the runner must allocate it first")
        scales = dict(k_scale=self.k_scale, v_scale=self.v_scale)
        attn_ops.store_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping, **scales)
        if q.shape[0] != k.shape[0]:
            if meta.rows_meta is None:
                raise RuntimeError("attention of a subset of rows needs the step's rows_meta")
            meta = meta.rows_meta
        if meta.is_decode:
            return attn_ops.paged_decode(q, self.k_cache, self.v_cache, meta.seq_lens, meta.block_tables,
                                         self.scale, self.sliding_window, self.softcap, **scales)
        return attn_ops.varlen_attention(q, self.k_cache, self.v_cache, meta.cu_seqlens_q, meta.seq_lens,
                                         meta.block_tables, self.scale, self.sliding_window, self.softcap, **scales)
