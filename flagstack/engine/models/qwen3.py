"""Qwen3 dense decoder: like Llama, but each q and k head is RMS-normalized before RoPE."""
from __future__ import annotations

import torch
from transformers import PretrainedConfig

from flagstack.engine.context import get_context
from flagstack.engine.models.layers import Attention, CausalLM, RMSNorm, fused_decode

from flagstack.ops import qk_norm_rope


class Qwen3Attention(Attention):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def rotate(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               cos_sin_cache: torch.Tensor) -> bool:
        """q/k norm and RoPE; with the decode fusions on (layers.fused_decode), k and v also go into the
        KV cache in the same launch."""
        store = {}
        if fused_decode(q):
            k_cache, v_cache = self.attn.caches()
            store = dict(v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=get_context().slot_mapping)
        qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, positions, cos_sin_cache,
                     self.q_norm.eps, True, **store)
        return bool(store)


class Qwen3ForCausalLM(CausalLM):
    attention_cls = Qwen3Attention
