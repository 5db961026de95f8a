"""Qwen3 dense decoder: like Llama, but each q and k head is RMS-normalized before RoPE."""
from __future__ import annotations

import torch
from transformers import PretrainedConfig

from flagstack.engine.models.layers import Attention, CausalLM, RMSNorm

from flagstack.ops import qk_norm_rope


class Qwen3Attention(Attention):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def rotate(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
               cos_sin_cache: torch.Tensor) -> None:
        qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, positions, cos_sin_cache,
                     self.q_norm.eps, True)


class Qwen3ForCausalLM(CausalLM):
    attention_cls = Qwen3Attention
