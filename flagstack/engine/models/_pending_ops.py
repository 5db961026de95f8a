"""TEMPORARY stand-ins (torch, HF rounding) for the LLM ops engineer A is adding to flagstack.ops,
with the agreed signatures. Deleted once they land; the models import from flagstack.ops first."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flagstack.ops import rms_norm


def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight[ids]


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    residual.add_(x)
    return rms_norm(residual, weight, eps), residual


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope_cos_sin_cache(head_dim: int, max_pos: int, base: float, rope_scaling: dict | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) == "llama3":
        factor, low, high = rope_scaling["factor"], rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
        old_len = rope_scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    freqs = torch.arange(max_pos, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype)


def _rope_inplace(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].clone(), x[..., half:].clone()
    c, s = cos.to(x.dtype)[:, None], sin.to(x.dtype)[:, None]
    x[..., :half] = x1 * c - x2 * s
    x[..., half:] = x2 * c + x1 * s


def rotary_embedding(positions, q, k, cos_sin_cache, head_size, is_neox=True):
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)
    for t in (q, k):
        _rope_inplace(t.view(t.shape[0], -1, head_size), cos, sin)
    return q, k


def qk_norm_rope(q, k, q_weight, k_weight, positions, cos_sin_cache, eps, is_neox=True):
    head_size = q_weight.shape[0]
    for t, w in ((q, q_weight), (k, k_weight)):
        heads = t.view(t.shape[0], -1, head_size)
        heads.copy_(rms_norm(heads, w, eps))
    return rotary_embedding(positions, q, k, cos_sin_cache, head_size, is_neox)
