"""Qwen3's q/k preprocessing fused: per-head RMSNorm of q and k (weights of size head_dim), then RoPE.

One launch, in place. Grid and layout as `rotary_embedding`: a program takes one token's cos/sin row
and BLOCK_H whole heads (of q, or of k), loads each head once as its two rotation halves, normalizes
it with the sum of squares of both halves, rotates, and writes it back. Memory traffic: read + write
q and k once, 2*T*(Hq+Hk)*head_dim*elem_size bytes (20 KB per Qwen3-4B bf16 token: 40 heads of 128),
plus a cos/sin row per token and the two weight vectors (L2-resident).

Rounding: norm and rotation in fp32, rounded once to q's dtype (HF rounds the normed head, multiplies
by the weight, and rotates with cos/sin rounded to the model dtype; rounding once is more accurate
and matches HF exactly in fp32). Full rotary only: cos_sin_cache must be [max_pos, head_dim].
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.checks import check_same_device, check_tensor
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.pdl import pdl_launch, pdl_wait
from flagstack.ops.registry import BenchCase, register
from flagstack.ops.rms_norm import rms_norm_reference
from flagstack.ops.rotary import (check_heads, check_rope_args, heads_view, rope_cos_sin, rope_cos_sin_cache,
                                  rope_pair_offsets, rotate_reference_)


@triton.jit
def _norm_rope_heads(ptr, w_ptr, token, first_head, n_heads, token_stride, head_stride, cos, sin, half, eps,
                     IS_NEOX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    heads = first_head + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    off1, off2 = rope_pair_offsets(d, half, IS_NEOX)
    d_mask = d < half
    mask = (heads < n_heads)[:, None] & d_mask[None, :]
    base = ptr + token * token_stride + heads[:, None].to(tl.int64) * head_stride
    x1 = tl.load(base + off1[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + off2[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half) + eps)[:, None]
    x1 = x1 * rstd * tl.load(w_ptr + off1, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    x2 = x2 * rstd * tl.load(w_ptr + off2, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(base + off1[None, :], (x1 * cos - x2 * sin).to(ptr.dtype.element_ty), mask=mask)
    tl.store(base + off2[None, :], (x2 * cos + x1 * sin).to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _qk_norm_rope_kernel(pos_ptr, q_ptr, k_ptr, qw_ptr, kw_ptr, cache_ptr, n_q_heads, n_k_heads,
                         q_token_stride, q_head_stride, k_token_stride, k_head_stride, cache_stride, half, eps,
                         IS_NEOX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                         USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    head_block = tl.program_id(1)
    cos, sin = rope_cos_sin(cache_ptr, pos_ptr, token, cache_stride, half, BLOCK_D)
    q_blocks = tl.cdiv(n_q_heads, BLOCK_H)
    if head_block < q_blocks:
        _norm_rope_heads(q_ptr, qw_ptr, token, head_block * BLOCK_H, n_q_heads, q_token_stride, q_head_stride,
                         cos, sin, half, eps, IS_NEOX, BLOCK_H, BLOCK_D)
    else:
        _norm_rope_heads(k_ptr, kw_ptr, token, (head_block - q_blocks) * BLOCK_H, n_k_heads, k_token_stride,
                         k_head_stride, cos, sin, half, eps, IS_NEOX, BLOCK_H, BLOCK_D)


def qk_norm_rope_triton(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                        positions: torch.Tensor, cos_sin_cache: torch.Tensor, eps: float = 1e-6,
                        is_neox: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm then RoPE of q and k, in place, in one Triton launch; returns (q, k)."""
    head_size = q_weight.shape[0]
    qh, kh = heads_view(q, head_size), heads_view(k, head_size)
    tokens, half = qh.shape[0], head_size // 2
    positions = positions.contiguous()  # the kernel reads positions[token] at unit stride
    if tokens == 0:
        return q, k
    block_d = next_power_of_2(half)
    block_h = min(next_power_of_2(max(qh.shape[1], kh.shape[1])), max(1, 512 // block_d))
    grid = (tokens, cdiv(qh.shape[1], block_h) + cdiv(kh.shape[1], block_h))
    _qk_norm_rope_kernel[grid](positions, qh, kh, q_weight.contiguous(), k_weight.contiguous(), cos_sin_cache,
                               qh.shape[1], kh.shape[1], qh.stride(0), qh.stride(1), kh.stride(0), kh.stride(1),
                               cos_sin_cache.stride(0), half, eps, IS_NEOX=is_neox, BLOCK_H=block_h,
                               BLOCK_D=block_d, num_warps=4, **pdl_launch(q.device))
    return q, k


def qk_norm_rope_reference(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                           positions: torch.Tensor, cos_sin_cache: torch.Tensor, eps: float = 1e-6,
                           is_neox: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3 q/k: RMSNorm of each head (fp32), then RoPE (fp32), rounded once, in place; returns (q, k)."""
    head_size = q_weight.shape[0]
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)
    for t, weight in ((q, q_weight), (k, k_weight)):
        view = heads_view(t, head_size)
        view.copy_(rotate_reference_(rms_norm_reference(view.float(), weight, eps), cos, sin, is_neox))
    return q, k


def _validate(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
              positions: torch.Tensor, cos_sin_cache: torch.Tensor, eps: float = 1e-6, is_neox: bool = True) -> None:
    check_tensor("q_weight", q_weight, min_dim=1, max_dim=1)
    check_tensor("k_weight", k_weight, min_dim=1, max_dim=1)
    head_size = q_weight.shape[0]
    if k_weight.shape[0] != head_size or head_size % 2:
        raise ValueError(f"q_weight and k_weight must both have the (even) head size, got {head_size} and "
                         f"{k_weight.shape[0]}")
    check_heads("q", q, head_size)
    check_heads("k", k, head_size)
    if k.dtype != q.dtype or k.shape[0] != q.shape[0]:
        raise ValueError(f"k must match q in dtype and tokens ({q.dtype}, {q.shape[0]}), got {k.dtype}, {k.shape[0]}")
    check_rope_args(positions, cos_sin_cache, q.shape[0], head_size)
    if cos_sin_cache.shape[1] != head_size:
        raise ValueError(f"cos_sin_cache must rotate the whole head ({head_size} dims), got {cos_sin_cache.shape[1]}")
    check_same_device(q=q, k=k, q_weight=q_weight, k_weight=k_weight, positions=positions, cos_sin_cache=cos_sin_cache)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def _bench_case(rows: int, dtype: torch.dtype, device: str, q_heads: int = 32, kv_heads: int = 8,
                head_dim: int = 128) -> BenchCase:
    q = torch.randn(rows, q_heads * head_dim, dtype=dtype, device=device)
    k = torch.randn(rows, kv_heads * head_dim, dtype=dtype, device=device)
    qw, kw = (torch.randn(head_dim, dtype=dtype, device=device) for _ in range(2))
    cache = rope_cos_sin_cache(head_dim, max(rows, 1), 1e6, device=device)
    positions = torch.arange(rows, device=device)
    qk_bytes = 2 * (q.numel() + k.numel()) * q.element_size()
    return BenchCase((q, k, qw, kw, positions, cache, 1e-6, True),
                     bytes_moved=qk_bytes + rows * (head_dim * 4 + positions.element_size()))


qk_norm_rope = register("qk_norm_rope", reference=qk_norm_rope_reference, triton=qk_norm_rope_triton,
                        validate=_validate, bench_case=_bench_case)
