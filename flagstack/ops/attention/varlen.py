"""Varlen attention over the paged cache: each sequence's new queries attend causally to its own
new tokens and fully to its cached prefix (prefill, chunked prefill, prefix-cache hits, and decode
rows in the same batch).

Inputs: q [T, Hq, D] packed by sequence; cu_seqlens_q [S+1] int32 (query offsets); seq_lens [S]
int32 = total KV length of each sequence including the new tokens (already stored in the cache);
block_tables [S, max_blocks] int32. The new queries of sequence s are its last
(cu_seqlens_q[s+1] - cu_seqlens_q[s]) positions. GQA: Hq must be a multiple of Hkv.

Kernel (flash-attention tiles): one program per (query tile, kv head). A tile packs BLOCK_Q query
tokens x the GQA group's heads into BLOCK_M rows, so each K/V tile is loaded once for the group and
decode rows (1 token x group heads) still fill a tl.dot. Tiles are laid out without a host sync:
sequence s owns tiles cu_seqlens_q[s] // BLOCK_Q + s onward (one more than it may need; spare tiles
exit at once), and each program finds its sequence by binary search over cu_seqlens_q. Keys a tile
sees in full (below its first query position) run without masks; only the diagonal tiles mask.
Compute: 4 * sum(n_new * kv_visible) * Hq * D flops; K/V reads are once per tile per kv head.
An fp8 cache is widened after each load and its scales applied as in paged_decode.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from flagstack.ops.attention.common import (FP8_KV, HALF_DTYPES, check_attention_args, dot_precision,
                                            gather_pages, upcast_for_interpreter, score_scale, softmax_tile_step)
from flagstack.ops.checks import check_tensor
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.launch_cache import launch
from flagstack.ops.registry import BenchCase, register


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence's pages, as a contiguous [length, Hkv, D] tensor."""
    block_size = cache.shape[1]
    n_blocks = (length + block_size - 1) // block_size
    return gather_pages(cache, block_table[:n_blocks].long()).reshape(-1, *cache.shape[2:])[:length]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
           softcap: float | None, causal: bool = False) -> torch.Tensor:
    """fp32 attention of q [B, Hq, Lq, D] over k/v [B, Hkv, Lk, D] with a boolean keep-mask; mask None:
    every key is kept, or with causal=True the plain causal pattern of Lq == Lk (which SDPA computes
    without a mask, skipping the upper half: ~2x faster on CPU for a whole prompt). A mask must
    broadcast over the query rows (size 1 there) when Lq == 1."""
    q, k, v = q.float(), k.float(), v.float()
    batch, q_heads, q_len, head_dim = q.shape
    group = q_heads // k.shape[1]
    if q_len == 1 and group > 1 and not causal:
        # one query token: its GQA group becomes the query rows of the shared kv head (q head i reads kv
        # head i // group), so each K/V row is read once per kv head, not once per q head
        # (CPU decode, SmolLM2's 9/3 heads: 25% less time in SDPA)
        out = attend(q.reshape(batch, k.shape[1], group, head_dim), k, v, mask, scale, softcap)
        return out.reshape(batch, q_heads, 1, head_dim)
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              enable_gqa=True)
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = softcap * torch.tanh((q @ k.transpose(-1, -2)) * scale / softcap)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def split_prefix_enabled() -> bool:
    """Whether the CPU reference splits attention after a cached prefix in two (FLAGSTACK_SPLIT_PREFIX=0: off)."""
    return os.environ.get("FLAGSTACK_SPLIT_PREFIX", "1") != "0"


def attend_after_prefix(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cached: int,
                        scale: float) -> torch.Tensor:
    """Causal attention of the last n positions q [1, Hq, n, D] over k/v [1, Hkv, cached + n, D], on CPU,
    as two mask-free SDPA calls merged by their log-sum-exp: the new tokens over the cached prefix (every
    key counts) and over themselves (plain causal, which skips the upper triangle). One masked call over
    the whole context builds and reads an [n, cached + n] mask and computes the masked-out triangle too.
    """
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # also returns the log-sum-exp
    q, k, v = q.float(), k.float(), v.float()
    out_old, lse_old = flash(q, k[:, :, :cached], v[:, :, :cached], 0.0, False, scale=scale)
    out_new, lse_new = flash(q, k[:, :, cached:], v[:, :, cached:], 0.0, True, scale=scale)
    # softmax over both key sets = the two partial results weighted by their shares of the total mass
    return out_new.lerp_(out_old, torch.sigmoid(lse_old - lse_new)[..., None])


@dataclass(frozen=True)
class VarlenConfig:
    """Launch parameters of the varlen kernel (the benchmark sweeps them)."""

    block_m: int = 128  # rows = query tokens x group heads
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    # exact P.V (see softmax_tile_step): 1.5x the matmul work; without it half-precision P misses
    # the fp16/bf16 tolerances by up to ~5e-4 absolute, as every flash kernel does
    split_p: bool = True


def varlen_config(num_tokens: int, num_seqs: int, group: int, head_dim: int, fp8: bool = False) -> VarlenConfig:
    """Big tiles for prefill; tiles just tall enough for the mean query length of decode-heavy batches.

    Prefill over an fp8 cache takes 128x128 tiles, 2 stages and the single rounded P.V: the fastest in the
    H200 sweep (attention-sweep-fp8-nvidia-h200-2026-11-29: 436 us at 4096 tokens against 658 with the bf16
    config). Exact P.V buys nothing there: P's fp16 rounding (2^-11) is far below the e4m3 values' (2^-4).
    """
    mean_rows = cdiv(num_tokens, max(num_seqs, 1)) * group
    block_m = max(16, next_power_of_2(group), min(128, next_power_of_2(mean_rows)))
    if fp8 and block_m == 128 and head_dim <= 128:
        return VarlenConfig(block_m=128, block_n=128, num_warps=8, num_stages=2, split_p=False)
    block_n = 64 if head_dim <= 128 else 32
    return VarlenConfig(block_m=block_m, block_n=block_n, num_warps=8 if block_m >= 128 else 4,
                        num_stages=3 if head_dim <= 128 else 2)


@triton.jit
def _find_sequence(cu_seqlens_q_ptr, num_seqs, tile, BLOCK_Q: tl.constexpr):
    """The sequence owning `tile`: the last s with cu_seqlens_q[s] // BLOCK_Q + s <= tile."""
    lo = 0
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tl.load(cu_seqlens_q_ptr + mid) // BLOCK_Q + mid <= tile:
            lo = mid
        else:
            hi = mid - 1
    return lo


@triton.jit
def _varlen_tile(acc, m_i, l_i, q, q_pos, start, hi, table, k_head, v_head, kc_stride_b, kc_stride_t,
                 vc_stride_b, vc_stride_t, qk_scale, softcap, window, HEAD_DIM: tl.constexpr,
                 BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DIAGONAL: tl.constexpr,
                 USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
                 PRECISION: tl.constexpr, SPLIT_P: tl.constexpr):
    # Keys start..start+BLOCK_N; off the diagonal every key is below every row's position and
    # inside the cache, so neither the loads nor the scores need a mask (unless a window cuts in).
    tokens = start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    if DIAGONAL:
        ok = tokens < hi
        page = tl.load(table + tokens // BLOCK_SIZE, mask=ok, other=0).to(tl.int64)
    else:
        page = tl.load(table + tokens // BLOCK_SIZE).to(tl.int64)
    offset = tokens % BLOCK_SIZE
    k_ptrs = k_head + (page * kc_stride_b + offset * kc_stride_t)[:, None] + dims[None, :]
    v_ptrs = v_head + (page * vc_stride_b + offset * vc_stride_t)[:, None] + dims[None, :]
    if DIAGONAL:
        k = tl.load(k_ptrs, mask=ok[:, None], other=0.0).to(q.dtype)
        v = tl.load(v_ptrs, mask=ok[:, None], other=0.0).to(q.dtype)
        keep = tokens[None, :] <= q_pos[:, None]
    else:
        k = tl.load(k_ptrs).to(q.dtype)
        v = tl.load(v_ptrs).to(q.dtype)
        keep = tokens[None, :] >= 0
    if USE_WINDOW:
        keep = keep & (tokens[None, :] > q_pos[:, None] - window)
    return softmax_tile_step(acc, m_i, l_i, q, k, v, keep, qk_scale, softcap,
                             DIAGONAL or USE_WINDOW, USE_SOFTCAP, UPCAST, PRECISION, SPLIT_P)


@triton.jit(do_not_specialize=["bt_stride_s", "num_seqs"])  # per-step values: one compile
def _varlen_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, cu_seqlens_q_ptr, seq_lens_ptr,
                   block_tables_ptr, q_stride_t, q_stride_h, kc_stride_b, kc_stride_t, kc_stride_h,
                   vc_stride_b, vc_stride_t, vc_stride_h, bt_stride_s, out_stride_t, out_stride_h,
                   num_seqs, qk_scale, softcap, window, v_scale,
                   GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                   USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr, SPLIT_P: tl.constexpr, FP16_TILES: tl.constexpr):
    # Highest tile index first: the last tiles of a causal sequence see the most keys, so they start
    # early and the short ones fill the tail.
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_sequence(cu_seqlens_q_ptr, num_seqs, tile, BLOCK_Q)
    q_begin = tl.load(cu_seqlens_q_ptr + seq)
    n_new = tl.load(cu_seqlens_q_ptr + seq + 1) - q_begin
    q0 = (tile - (q_begin // BLOCK_Q + seq)) * BLOCK_Q
    if q0 < n_new:
        kv_len = tl.load(seq_lens_ptr + seq).to(tl.int32)
        rows = tl.arange(0, BLOCK_M)
        q_idx = q0 + rows // GROUP
        heads = kv_head * GROUP + rows % GROUP
        row_ok = (rows < BLOCK_Q * GROUP) & (q_idx < n_new)
        q_pos = kv_len - n_new + q_idx
        dims = tl.arange(0, HEAD_DIM)
        q_tokens = (q_begin + q_idx).to(tl.int64)
        q = tl.load(q_ptr + q_tokens[:, None] * q_stride_t + heads[:, None] * q_stride_h + dims[None, :],
                    mask=row_ok[:, None], other=0.0)
        if FP16_TILES:  # as in paged_decode: fp16 products, the cheap widening of fp8 pages
            q = q.to(tl.float16)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        first_pos = kv_len - n_new + q0
        hi = tl.minimum(first_pos + BLOCK_Q, kv_len)  # keys past the tile's last query are never seen
        lo = 0
        if USE_WINDOW:
            lo = tl.maximum(first_pos - window + 1, 0) // BLOCK_N * BLOCK_N
        full_end = tl.maximum((first_pos + 1) // BLOCK_N * BLOCK_N, lo)
        table = block_tables_ptr + seq.to(tl.int64) * bt_stride_s
        k_head = k_cache_ptr + kv_head * kc_stride_h
        v_head = v_cache_ptr + kv_head * vc_stride_h
        for start in range(lo, full_end, BLOCK_N):
            acc, m_i, l_i = _varlen_tile(acc, m_i, l_i, q, q_pos, start, hi, table, k_head, v_head,
                                         kc_stride_b, kc_stride_t, vc_stride_b, vc_stride_t, qk_scale,
                                         softcap, window, HEAD_DIM, BLOCK_SIZE, BLOCK_N, False,
                                         USE_WINDOW, USE_SOFTCAP, UPCAST, PRECISION, SPLIT_P)
        for start in range(full_end, hi, BLOCK_N):
            acc, m_i, l_i = _varlen_tile(acc, m_i, l_i, q, q_pos, start, hi, table, k_head, v_head,
                                         kc_stride_b, kc_stride_t, vc_stride_b, vc_stride_t, qk_scale,
                                         softcap, window, HEAD_DIM, BLOCK_SIZE, BLOCK_N, True,
                                         USE_WINDOW, USE_SOFTCAP, UPCAST, PRECISION, SPLIT_P)
        out = acc * v_scale / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + q_tokens[:, None] * out_stride_t + heads[:, None] * out_stride_h + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def varlen_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                            block_tables: torch.Tensor, scale: float, sliding_window: int | None = None,
                            softcap: float | None = None, *, k_scale: float = 1.0, v_scale: float = 1.0,
                            config: VarlenConfig | None = None) -> torch.Tensor:
    """Causal attention of packed new queries over the paged cache with one Triton launch."""
    num_tokens, q_heads, head_dim = q.shape
    num_seqs = seq_lens.shape[0]
    out = torch.empty_like(q)
    if num_tokens == 0 or num_seqs == 0:
        return out
    if q.stride(-1) != 1:
        q = q.contiguous()
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    cfg = config or varlen_config(num_tokens, num_seqs, group, head_dim, k_cache.dtype == FP8_KV)
    if cfg.block_m < group:
        raise ValueError(f"config.block_m must be >= the GQA group size ({group}), got {cfg.block_m}")
    block_q = cfg.block_m // group
    qk_scale, cap = score_scale(scale * k_scale, softcap)
    grid = (num_tokens // block_q + num_seqs, kv_heads)
    launch(_varlen_kernel, grid,
           q, k_cache, v_cache, out, cu_seqlens_q, seq_lens, block_tables,
           q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
           v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
           out.stride(0), out.stride(1), num_seqs, qk_scale, cap, sliding_window or 0, v_scale,
           GROUP=group, BLOCK_M=cfg.block_m, BLOCK_Q=block_q, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
           BLOCK_N=cfg.block_n, USE_WINDOW=sliding_window is not None, USE_SOFTCAP=softcap is not None,
           UPCAST=upcast_for_interpreter(q.dtype), PRECISION=dot_precision(q.dtype),
           SPLIT_P=cfg.split_p and q.dtype != torch.float32,
           FP16_TILES=k_cache.dtype == FP8_KV and q.dtype in HALF_DTYPES,
           num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


def varlen_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                               block_tables: torch.Tensor, scale: float,
                               sliding_window: int | None = None, softcap: float | None = None, *,
                               k_scale: float = 1.0, v_scale: float = 1.0) -> torch.Tensor:
    """Causal attention of packed new queries over each sequence's cached K/V; returns [T, Hq, D].
    An fp8 cache's scales: k_scale multiplies the score scale, v_scale the output."""
    if v_scale != 1:
        out = varlen_attention_reference(q.float(), k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, scale,
                                         sliding_window, softcap, k_scale=k_scale)
        return (out * v_scale).to(q.dtype)
    scale = scale * k_scale
    out = torch.empty_like(q)
    starts, lens = cu_seqlens_q.tolist(), seq_lens.tolist()
    for s, kv_len in enumerate(lens):
        q_s = q[starts[s]:starts[s + 1]]
        n_new = q_s.shape[0]
        if n_new == 0:
            continue
        k = gather_kv(k_cache, block_tables[s], kv_len)
        v = gather_kv(v_cache, block_tables[s], kv_len)
        whole_prompt = kv_len == n_new and sliding_window is None
        sees_all = n_new == 1 and sliding_window is None  # one token after its prefix: every key counts
        if (not (whole_prompt or sees_all) and sliding_window is None and softcap is None
                and q.device.type == "cpu" and split_prefix_enabled()):
            o = attend_after_prefix(q_s.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                    kv_len - n_new, scale)
            out[starts[s]:starts[s + 1]] = o[0].transpose(0, 1).to(q.dtype)
            continue
        mask = None
        if not (whole_prompt or sees_all):  # new tokens after a cached prefix (or a window): a mask
            q_pos = torch.arange(kv_len - n_new, kv_len, device=q.device)[:, None]
            k_pos = torch.arange(kv_len, device=q.device)[None, :]
            mask = k_pos <= q_pos
            if sliding_window is not None:
                mask &= k_pos > q_pos - sliding_window
        o = attend(q_s.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                   mask, scale, softcap, causal=whole_prompt)
        out[starts[s]:starts[s + 1]] = o[0].transpose(0, 1).to(q.dtype)
    return out


def _validate(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cu_seqlens_q: torch.Tensor,
              seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float,
              sliding_window: int | None = None, softcap: float | None = None, *, k_scale: float = 1.0,
              v_scale: float = 1.0) -> None:
    check_attention_args(q, k_cache, v_cache, seq_lens, block_tables, scale, sliding_window, softcap, k_scale,
                         v_scale)
    check_tensor("cu_seqlens_q", cu_seqlens_q, dtypes=(torch.int32, torch.int64), min_dim=1, max_dim=1)
    if cu_seqlens_q.shape[0] != seq_lens.shape[0] + 1:
        raise ValueError(f"cu_seqlens_q must have num_seqs + 1 ({seq_lens.shape[0] + 1}) entries, "
                         f"got shape {tuple(cu_seqlens_q.shape)}")
    if cu_seqlens_q.device != q.device:
        raise ValueError(f"cu_seqlens_q must be on q's device ({q.device}), got {cu_seqlens_q.device}")


def _bench_case(rows: int, dtype: torch.dtype, device: str, new_tokens: int | None = None,
                cached: int | None = None) -> BenchCase:
    """`rows` sequences (Qwen3-4B heads; 8 q / 2 kv on CPU), each `new_tokens` queries over `cached` ones."""
    from flagstack.ops.attention.paged_decode import random_paged_kv

    # CPU: interpreter-sized; GPU: at most 32k new tokens (the reference loops over sequences)
    new_tokens = new_tokens or (9 if device == "cpu" else max(1, min(1024, 2 ** 15 // rows)))
    cached = cached if cached is not None else (12 if device == "cpu" else new_tokens)
    q_heads, kv_heads = (8, 2) if device == "cpu" else (32, 8)
    news = [max(1, new_tokens - 2 * (s % 3)) for s in range(rows)]
    lens = [cached + n for n in news]
    k_cache, v_cache, table = random_paged_kv(lens, kv_heads, 128, 16, dtype, device)
    q = torch.randn(sum(news), q_heads, 128, dtype=dtype, device=device)
    cu = torch.tensor([0] + news, device=device).cumsum(0).to(torch.int32)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    kv_bytes = 2 * sum(lens) * kv_heads * 128 * k_cache.element_size()
    return BenchCase((q, k_cache, v_cache, cu, seq_lens, table, 128 ** -0.5),
                     bytes_moved=kv_bytes + 2 * q.numel() * q.element_size())


varlen_attention = register("varlen_attention", reference=varlen_attention_reference,
                            triton=varlen_attention_triton, validate=_validate, bench_case=_bench_case)
