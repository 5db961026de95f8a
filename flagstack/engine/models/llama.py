"""Llama-family decoder (Llama 2/3 incl. llama3 rope scaling, SmolLM2): plain RoPE on q and k."""
from __future__ import annotations

import torch

from flagstack.engine.models.layers import Attention, CausalLM

from flagstack.ops import rotary_embedding


class LlamaAttention(Attention):
    def rotate(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
               cos_sin_cache: torch.Tensor) -> None:
        rotary_embedding(positions, q, k, cos_sin_cache, self.head_dim, True)


class LlamaForCausalLM(CausalLM):
    attention_cls = LlamaAttention
