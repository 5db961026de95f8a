"""Qwen3's q/k preprocessing fused: per-head RMSNorm of q and k (weights of size head_dim), then RoPE.

One launch, in place. Grid and layout as `rotary_embedding`: a program takes one token's cos/sin row
and BLOCK_H whole heads (of q, or of k), loads each head once as its two rotation halves, normalizes
it with the sum of squares of both halves, rotates, and writes it back. Memory traffic: read + write
q and k once, 2*T*(Hq+Hk)*head_dim*elem_size bytes (20 KB per Qwen3-4B bf16 token: 40 heads of 128),
plus a cos/sin row per token and the two weight vectors (L2-resident).

Rounding: norm and rotation in fp32, rounded once to q's dtype (HF rounds the normed head, multiplies
by the weight, and rotates with cos/sin rounded to the model dtype; rounding once is more accurate
and matches HF exactly in fp32). Full rotary only: cos_sin_cache must be [max_pos, head_dim].

With v, k_cache, v_cache and slot_mapping, the programs that rotate k also do store_kv's work: they
write the rotated k (as stored in place, then cast to the cache dtype) and the same heads of v into
slot slot_mapping[token] of the paged cache (slot -1: padding, not written). One launch less per layer;
the extra traffic is store_kv's own, read v + write k and v (3*T*Hkv*head_dim*elem), with k's read saved.
The cache strides all come from the tensors: any layout with a unit-stride head_dim works.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.attention.common import FP8_KV
from flagstack.ops.attention.kv_write import store_kv, store_kv_reference
from flagstack.ops.checks import check_same_device, check_tensor
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.launch_cache import launch
from flagstack.ops.pdl import pdl_launch, pdl_wait
from flagstack.ops.registry import BenchCase, register
from flagstack.ops.rms_norm import rms_norm_reference
from flagstack.ops.rotary import (check_heads, check_rope_args, heads_view, rope_cos_sin, rope_cos_sin_cache,
                                  rope_pair_offsets, rotate_reference_)


@triton.jit
def _norm_rope_heads(ptr, w_ptr, token, heads, token_stride, head_stride, off1, off2, mask, cos, sin, half, eps):
    """RMSNorm then RoPE of a token's heads [BLOCK_H] (not stored): (pointer to each head, the two rotated
    halves in ptr's dtype)."""
    base = ptr + token * token_stride + heads[:, None].to(tl.int64) * head_stride
    x1 = tl.load(base + off1[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + off2[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half) + eps)[:, None]
    d_mask = off2 < 2 * half  # the head's dims: off2 is d + half (NeoX) or 2d + 1 (GPT-J), d < half either way
    x1 = x1 * rstd * tl.load(w_ptr + off1, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    x2 = x2 * rstd * tl.load(w_ptr + off2, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    y1 = (x1 * cos - x2 * sin).to(ptr.dtype.element_ty)
    y2 = (x2 * cos + x1 * sin).to(ptr.dtype.element_ty)
    return base, y1, y2


@triton.jit
def _store_pair(base, off1, off2, mask, y1, y2):
    tl.store(base + off1[None, :], y1.to(base.dtype.element_ty), mask=mask)
    tl.store(base + off2[None, :], y2.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_heads(k1, k2, v_ptr, kc_ptr, vc_ptr, slot_ptr, token, heads, off1, off2, mask, v_token_stride,
                    v_head_stride, kc_stride_b, kc_stride_t, kc_stride_h, vc_stride_b, vc_stride_t, vc_stride_h,
                    BLOCK_SIZE: tl.constexpr):
    """Write the rotated k halves and the same heads of v into cache slot slot_mapping[token] (-1: none).
    v moves pair by pair with k's offsets, which cover the whole head. Called before k is stored in
    place: the v loads must not wait behind stores they may alias (q, k and v share the QKV output)."""
    slot = tl.load(slot_ptr + token).to(tl.int64)
    mask = mask & (slot >= 0)
    block, offset = slot // BLOCK_SIZE, slot % BLOCK_SIZE
    h = heads[:, None].to(tl.int64)
    v_base = v_ptr + token * v_token_stride + h * v_head_stride
    v1 = tl.load(v_base + off1[None, :], mask=mask)
    v2 = tl.load(v_base + off2[None, :], mask=mask)
    _store_pair(kc_ptr + block * kc_stride_b + offset * kc_stride_t + h * kc_stride_h, off1, off2, mask, k1, k2)
    _store_pair(vc_ptr + block * vc_stride_b + offset * vc_stride_t + h * vc_stride_h, off1, off2, mask, v1, v2)


@triton.jit
def _qk_norm_rope_kernel(pos_ptr, q_ptr, k_ptr, qw_ptr, kw_ptr, cache_ptr, n_q_heads, n_k_heads,
                         q_token_stride, q_head_stride, k_token_stride, k_head_stride, cache_stride, half, eps,
                         v_ptr, kc_ptr, vc_ptr, slot_ptr, v_token_stride, v_head_stride,
                         kc_stride_b, kc_stride_t, kc_stride_h, vc_stride_b, vc_stride_t, vc_stride_h,
                         IS_NEOX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                         STORE_KV: tl.constexpr, BLOCK_SIZE: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    head_block = tl.program_id(1)
    cos, sin = rope_cos_sin(cache_ptr, pos_ptr, token, cache_stride, half, BLOCK_D)
    d = tl.arange(0, BLOCK_D)
    off1, off2 = rope_pair_offsets(d, half, IS_NEOX)
    q_blocks = tl.cdiv(n_q_heads, BLOCK_H)
    if head_block < q_blocks:
        heads = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
        mask = (heads < n_q_heads)[:, None] & (d < half)[None, :]
        base, y1, y2 = _norm_rope_heads(q_ptr, qw_ptr, token, heads, q_token_stride, q_head_stride, off1, off2,
                                        mask, cos, sin, half, eps)
        _store_pair(base, off1, off2, mask, y1, y2)
    else:
        heads = (head_block - q_blocks) * BLOCK_H + tl.arange(0, BLOCK_H)
        mask = (heads < n_k_heads)[:, None] & (d < half)[None, :]
        base, y1, y2 = _norm_rope_heads(k_ptr, kw_ptr, token, heads, k_token_stride, k_head_stride, off1, off2,
                                        mask, cos, sin, half, eps)
        if STORE_KV:
            _store_kv_heads(y1, y2, v_ptr, kc_ptr, vc_ptr, slot_ptr, token, heads, off1, off2, mask,
                            v_token_stride, v_head_stride, kc_stride_b, kc_stride_t, kc_stride_h,
                            vc_stride_b, vc_stride_t, vc_stride_h, BLOCK_SIZE)
        _store_pair(base, off1, off2, mask, y1, y2)


def qk_norm_rope_triton(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                        positions: torch.Tensor, cos_sin_cache: torch.Tensor, eps: float = 1e-6,
                        is_neox: bool = True, v: torch.Tensor | None = None, k_cache: torch.Tensor | None = None,
                        v_cache: torch.Tensor | None = None,
                        slot_mapping: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm then RoPE of q and k, in place, in one Triton launch; returns (q, k). With v and
    the caches, the same launch writes the rotated k and v into their cache slots."""
    head_size = q_weight.shape[0]
    qh, kh = heads_view(q, head_size), heads_view(k, head_size)
    tokens, half = qh.shape[0], head_size // 2
    positions = positions.contiguous()  # the kernel reads positions[token] at unit stride
    if tokens == 0:
        return q, k
    block_d = next_power_of_2(half)
    block_h = min(next_power_of_2(max(qh.shape[1], kh.shape[1])), max(1, 512 // block_d))
    grid = (tokens, cdiv(qh.shape[1], block_h) + cdiv(kh.shape[1], block_h))
    store_kv_on = v is not None
    store_args = _store_kv_args(v, k_cache, v_cache, slot_mapping, head_size) if store_kv_on else (None,) * 4 + (0,) * 8
    launch(_qk_norm_rope_kernel, grid, positions, qh, kh, q_weight.contiguous(), k_weight.contiguous(), cos_sin_cache,
           qh.shape[1], kh.shape[1], qh.stride(0), qh.stride(1), kh.stride(0), kh.stride(1),
           cos_sin_cache.stride(0), half, eps, *store_args, IS_NEOX=is_neox, BLOCK_H=block_h,
           BLOCK_D=block_d, STORE_KV=store_kv_on,
           BLOCK_SIZE=k_cache.shape[1] if store_kv_on else 1, num_warps=4, **pdl_launch(q.device))
    return q, k


def _store_kv_args(v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                   head_size: int) -> tuple:
    """The kernel's cache-write arguments. Every cache stride comes from the tensors: any layout whose head_dim
    has unit stride works, e.g. a head-major cache seen as [blocks, block_size, heads, dim] through a transpose."""
    vh = heads_view(v, head_size)
    return (vh, k_cache, v_cache, slot_mapping.contiguous(), vh.stride(0), vh.stride(1), *k_cache.stride()[:3],
            *v_cache.stride()[:3])


def qk_norm_rope_reference(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                           positions: torch.Tensor, cos_sin_cache: torch.Tensor, eps: float = 1e-6,
                           is_neox: bool = True, v: torch.Tensor | None = None, k_cache: torch.Tensor | None = None,
                           v_cache: torch.Tensor | None = None,
                           slot_mapping: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3 q/k: RMSNorm of each head (fp32), then RoPE (fp32), rounded once, in place; returns (q, k).
    With v, k_cache, v_cache and slot_mapping, then store_kv of the rotated k and v into the cache."""
    head_size = q_weight.shape[0]
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)
    for t, weight in ((q, q_weight), (k, k_weight)):
        view = heads_view(t, head_size)
        view.copy_(rotate_reference_(rms_norm_reference(view.float(), weight, eps), cos, sin, is_neox))
    if v is not None:
        store_kv_reference(heads_view(k, head_size), heads_view(v, head_size), k_cache, v_cache, slot_mapping)
    return q, k


def _validate_store_kv(k: torch.Tensor, v: object, k_cache: object, v_cache: object, slot_mapping: object,
                       head_size: int) -> None:
    """The cache-write arguments: all four or none; v like k; the caches and slots as store_kv takes them."""
    given = [a is not None for a in (v, k_cache, v_cache, slot_mapping)]
    if any(given) and not all(given):
        raise ValueError("v, k_cache, v_cache and slot_mapping must be given together (to store k and v) or not at all")
    if not any(given):
        return
    check_tensor("v", v, min_dim=2, max_dim=3)
    vh = heads_view(v, head_size) if v.shape[-1] % head_size == 0 else v
    kh = heads_view(k, head_size)
    if vh.shape != kh.shape or v.dtype != k.dtype or v.stride(-1) != 1:
        raise ValueError(f"v must be shaped and typed like k ({tuple(k.shape)}, {k.dtype}) with a unit-stride last "
                         f"dim, got {tuple(v.shape)}, {v.dtype}")
    store_kv.entry.validate(kh, vh, k_cache, v_cache, slot_mapping)
    if k_cache.dtype == FP8_KV:  # the fused write casts without store_kv's scaling and rounding
        raise ValueError("k_cache: the fused KV write takes fp16/bf16/fp32 caches; store an fp8 cache with store_kv")


def _validate(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
              positions: torch.Tensor, cos_sin_cache: torch.Tensor, eps: float = 1e-6, is_neox: bool = True,
              v: torch.Tensor | None = None, k_cache: torch.Tensor | None = None, v_cache: torch.Tensor | None = None,
              slot_mapping: torch.Tensor | None = None) -> None:
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
    _validate_store_kv(k, v, k_cache, v_cache, slot_mapping, head_size)
    check_same_device(q=q, k=k, q_weight=q_weight, k_weight=k_weight, positions=positions, cos_sin_cache=cos_sin_cache,
                      v=v)
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
