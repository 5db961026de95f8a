"""Paged decode attention: one query token per sequence over its whole cached context.

q [S, Hq, D]; seq_lens [S] = context length including the token just stored; block_tables
[S, max_blocks]. Memory traffic: read each sequence's K and V once (2 * sum(seq_lens) * Hkv * D
elements), which is why GQA heads of one group must share each page load.

Kernel (flash-decoding): one program per (sequence, kv head, split). It holds the group's q heads as
the rows of one tile (padded to 16 for tl.dot), so every K/V row is loaded once for the whole group,
and walks its share of the context BLOCK_N tokens at a time, looking up each token's page. With more
than one split, programs write unnormalized partial outputs plus their row max and sum, and a
second kernel merges the splits. Splits are chosen from the batch size alone, so the launch needs
no host sync and is CUDA-graph safe; each sequence is cut into `num_splits` equal spans at run time.
An fp8 cache (see kv_write) is read at half the bytes and widened after the load: under a bf16/fp16 q to
fp16, the one type Hopper converts e4m3 to in one instruction (q too: its values sit far inside fp16's
range), under an fp32 q to fp32; k_scale folds into the score scale and v_scale into the output.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from flagstack.ops.attention.common import (FP8_KV, HALF_DTYPES, check_attention_args, dot_precision,
                                            gather_pages, upcast_for_interpreter, score_scale, softmax_tile_step)
from flagstack.ops.attention.varlen import attend
from flagstack.ops.host import cdiv, next_power_of_2, sm_count
from flagstack.ops.launch_cache import launch
from flagstack.ops.pdl import pdl_launch, pdl_wait
from flagstack.ops.registry import BenchCase, register

# below this a split's fixed cost (q load, partial write, merge) dominates: on an H200 24-64 tokens a split
# were fastest at batch 1-2 x 384-4096 (bench/results/decode-split-probe-*; 128 left 1 x 2048 at 12.2 us vs 9.1)
MIN_SPLIT_TOKENS = 32
MAX_SPLITS = 64


@dataclass(frozen=True)
class DecodeConfig:
    """Launch parameters of the decode kernel (the benchmark sweeps them)."""

    block_n: int = 64
    num_splits: int = 1
    num_warps: int = 4
    num_stages: int = 2
    split_p: bool = True  # exact P.V in half precision: one more small tl.dot, free when memory-bound


# Unsplit launches (batch x kv heads fills the SMs): 64-token tiles, 2 warps, 4 stages, from
# scripts/decode_gap_probe.py (bench/results/decode-gap-probe-*): against 128-token tiles at 4 warps and
# 2 stages, 0.96-0.97x SDPA instead of 0.90-0.92x on an H200, 0.975-0.981x instead of 0.963-0.970x on an H100.
UNSPLIT = DecodeConfig(block_n=64, num_splits=1, num_warps=2, num_stages=4)
# The same over an fp8 cache: half the bytes a tile, so 6 stages fit and hide more of the latency; on an H200
# 1.32-1.40x SDPA over bf16 K/V against 1.20-1.26x with 4 stages (bench/results/decode-fp8-probe-*).
UNSPLIT_FP8 = DecodeConfig(block_n=64, num_splits=1, num_warps=2, num_stages=6)


def decode_config(batch: int, kv_heads: int, max_tokens: int, head_dim: int,
                  device: torch.device, fp8: bool = False) -> DecodeConfig:
    """Unsplit when batch x kv heads fills the SMs; else split toward 4 programs per SM, >= 32 tokens each.

    From the H100 sweep (bench/results/attention-sweep-*): batch 1 x 8192 is fastest with 64 splits
    of 32-token tiles; batches of 64+ run unsplit (UNSPLIT). Short contexts split down to 32 tokens.
    """
    programs = batch * kv_heads
    sms = sm_count(device, cpu=8)  # 8 on CPU: the tests exercise splitting
    splits = 1 if programs >= sms else min(cdiv(4 * sms, programs), max_tokens // MIN_SPLIT_TOKENS, MAX_SPLITS)
    splits = max(1, splits)
    if splits > 1:
        return DecodeConfig(block_n=32, num_splits=splits, num_stages=3)
    # 4 stages of 64 rows of a wider head would not fit in shared memory
    if head_dim > 128:
        return DecodeConfig(block_n=64, num_splits=1)
    return UNSPLIT_FP8 if fp8 else UNSPLIT


@triton.jit
def _decode_tile(acc, m_i, l_i, q, start, hi, first, table, k_head, v_head, kc_stride_b, kc_stride_t,
                 vc_stride_b, vc_stride_t, qk_scale, softcap, HEAD_DIM: tl.constexpr,
                 BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, USE_WINDOW: tl.constexpr,
                 USE_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                 SPLIT_P: tl.constexpr):
    # Tokens start..start+BLOCK_N: one page-table lookup per token, then one K and one V row each.
    # (One lookup per page, the tile's rows built by tl.reshape, ran 1.4x slower on the H100.)
    tokens = start + tl.arange(0, BLOCK_N)
    ok = tokens < hi
    page = tl.load(table + tokens // BLOCK_SIZE, mask=ok, other=0).to(tl.int64)
    offset = tokens % BLOCK_SIZE
    k_rows = page * kc_stride_b + offset * kc_stride_t
    v_rows = page * vc_stride_b + offset * vc_stride_t
    dims = tl.arange(0, HEAD_DIM)
    k = tl.load(k_head + k_rows[:, None] + dims[None, :], mask=ok[:, None], other=0.0).to(q.dtype)
    v = tl.load(v_head + v_rows[:, None] + dims[None, :], mask=ok[:, None], other=0.0).to(q.dtype)
    keep = ok
    if USE_WINDOW:
        keep = keep & (tokens >= first)
    return softmax_tile_step(acc, m_i, l_i, q, k, v, keep[None, :], qk_scale, softcap,
                             True, USE_SOFTCAP, UPCAST, PRECISION, SPLIT_P)


@triton.jit(do_not_specialize=["bt_stride_s", "num_splits"])  # per-step values: one compile
def _paged_decode_kernel(q_ptr, k_cache_ptr, v_cache_ptr, seq_lens_ptr, block_tables_ptr, out_ptr,
                         part_out_ptr, part_max_ptr, part_sum_ptr,
                         q_stride_s, q_stride_h, kc_stride_b, kc_stride_t, kc_stride_h,
                         vc_stride_b, vc_stride_t, vc_stride_h, bt_stride_s, out_stride_s, out_stride_h,
                         num_q_heads, num_splits, qk_scale, softcap, window, v_scale,
                         GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
                         USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
                         PRECISION: tl.constexpr, SPLIT_P: tl.constexpr, FP16_TILES: tl.constexpr,
                         USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq).to(tl.int32)
    first = 0
    if USE_WINDOW:
        first = tl.maximum(seq_len - window, 0)
    base = first // BLOCK_N * BLOCK_N
    per_split = tl.cdiv(tl.cdiv(seq_len - base, num_splits), BLOCK_N) * BLOCK_N
    lo = base + split * per_split
    hi = tl.minimum(lo + per_split, seq_len)

    rows = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + rows
    row_ok = rows < GROUP
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + seq * q_stride_s + heads[:, None] * q_stride_h + dims[None, :],
                mask=row_ok[:, None], other=0.0)
    if FP16_TILES:  # fp8 pages under a half-precision q: products in fp16, which e4m3 widens to cheaply
        q = q.to(tl.float16)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    table = block_tables_ptr + seq * bt_stride_s
    k_head = k_cache_ptr + kv_head * kc_stride_h
    v_head = v_cache_ptr + kv_head * vc_stride_h
    for start in range(lo, hi, BLOCK_N):
        acc, m_i, l_i = _decode_tile(acc, m_i, l_i, q, start, hi, first, table, k_head, v_head,
                                     kc_stride_b, kc_stride_t, vc_stride_b, vc_stride_t, qk_scale, softcap,
                                     HEAD_DIM, BLOCK_SIZE, BLOCK_N, USE_WINDOW, USE_SOFTCAP, UPCAST, PRECISION,
                                     SPLIT_P)
    acc = acc * v_scale
    if SPLIT:
        part = (seq * num_q_heads + heads) * num_splits + split  # [S, Hq, splits] flattened
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])
        tl.store(part_max_ptr + part, m_i, mask=row_ok)
        tl.store(part_sum_ptr + part, l_i, mask=row_ok)
    else:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + seq * out_stride_s + heads[:, None] * out_stride_h + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit(do_not_specialize=["num_splits"])
def _merge_splits_kernel(part_out_ptr, part_max_ptr, part_sum_ptr, out_ptr, out_stride_s, out_stride_h,
                         num_q_heads, num_splits, HEAD_DIM: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
                         USE_PDL: tl.constexpr):
    # Reads splits * (D + 2) fp32 per (seq, head): small next to the K/V pages the splits read.
    pdl_wait(USE_PDL)
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, BLOCK_SPLITS)
    ok = splits < num_splits
    part = (seq * num_q_heads + head) * num_splits + splits
    m = tl.load(part_max_ptr + part, mask=ok, other=float("-inf"))
    l = tl.load(part_sum_ptr + part, mask=ok, other=0.0)
    m_all = tl.max(m, 0)
    weight = tl.exp2(m - tl.where(m_all == float("-inf"), 0.0, m_all))  # empty splits weigh 0
    dims = tl.arange(0, HEAD_DIM)
    o = tl.load(part_out_ptr + part[:, None] * HEAD_DIM + dims[None, :], mask=ok[:, None], other=0.0)
    total = tl.sum(weight * l, 0)
    out = tl.sum(weight[:, None] * o, 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * out_stride_s + head * out_stride_h + dims, out.to(out_ptr.dtype.element_ty))


def paged_decode_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float,
                        sliding_window: int | None = None, softcap: float | None = None, *,
                        k_scale: float = 1.0, v_scale: float = 1.0,
                        config: DecodeConfig | None = None) -> torch.Tensor:
    """Decode attention with the split-K Triton kernel; `config` overrides the launch heuristic."""
    num_seqs, q_heads, head_dim = q.shape
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    if q.stride(-1) != 1:
        q = q.contiguous()
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    max_tokens = block_tables.shape[1] * block_size
    if sliding_window is not None:
        max_tokens = min(max_tokens, sliding_window + 64)
    cfg = config or decode_config(num_seqs, kv_heads, max_tokens, head_dim, q.device, k_cache.dtype == FP8_KV)
    split = cfg.num_splits > 1
    parts = (num_seqs, q_heads, cfg.num_splits) if split else (1,)
    part_out = torch.empty(*parts, head_dim if split else 1, dtype=torch.float32, device=q.device)
    part_max = torch.empty(parts, dtype=torch.float32, device=q.device)
    part_sum = torch.empty(parts, dtype=torch.float32, device=q.device)
    qk_scale, cap = score_scale(scale * k_scale, softcap)
    pdl = pdl_launch(q.device)
    launch(_paged_decode_kernel, (num_seqs, kv_heads, cfg.num_splits),
           q, k_cache, v_cache, seq_lens, block_tables, out, part_out, part_max, part_sum,
           q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
           v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
           out.stride(0), out.stride(1), q_heads, cfg.num_splits, qk_scale, cap, sliding_window or 0, v_scale,
           GROUP=group, BLOCK_G=max(16, next_power_of_2(group)), HEAD_DIM=head_dim,
           BLOCK_SIZE=block_size, BLOCK_N=cfg.block_n, SPLIT=split, USE_WINDOW=sliding_window is not None,
           USE_SOFTCAP=softcap is not None, UPCAST=upcast_for_interpreter(q.dtype),
           PRECISION=dot_precision(q.dtype), SPLIT_P=cfg.split_p and q.dtype != torch.float32,
           FP16_TILES=k_cache.dtype == FP8_KV and q.dtype in HALF_DTYPES, num_warps=cfg.num_warps,
           num_stages=cfg.num_stages, **pdl)
    if split:
        launch(_merge_splits_kernel, (num_seqs, q_heads),
               part_out, part_max, part_sum, out, out.stride(0), out.stride(1), q_heads, cfg.num_splits,
               HEAD_DIM=head_dim, BLOCK_SPLITS=next_power_of_2(cfg.num_splits), num_warps=4, **pdl)
    return out


def paged_decode_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float,
                           sliding_window: int | None = None, softcap: float | None = None, *,
                           k_scale: float = 1.0, v_scale: float = 1.0) -> torch.Tensor:
    """Decode attention: the batch's pages gathered and padded to the longest context in one shot, or,
    when padding would be over a third of the work (mixed lengths), in groups of similar lengths.
    An fp8 cache's scales: k_scale multiplies the score scale, v_scale the output."""
    if q.shape[0] == 0:
        return torch.empty_like(q)
    if v_scale != 1:
        out = paged_decode_reference(q.float(), k_cache, v_cache, seq_lens, block_tables, scale, sliding_window,
                                     softcap, k_scale=k_scale)
        return (out * v_scale).to(q.dtype)
    scale = scale * k_scale
    lens = seq_lens.tolist()  # one host copy; the per-layer small ops below cost more than the maths at batch 1
    if 3 * len(lens) * max(lens) <= 4 * sum(lens):
        return _decode_padded(q, k_cache, v_cache, lens, block_tables, scale, sliding_window, softcap)
    if sliding_window is not None or softcap is not None:
        out = torch.empty_like(q)
        for s, length in enumerate(lens):
            out[s:s + 1] = _decode_padded(q[s:s + 1], k_cache, v_cache, [length], block_tables[s:s + 1], scale,
                                          sliding_window, softcap)
        return out
    return _decode_grouped(q, k_cache, v_cache, lens, block_tables, scale)


DECODE_GROUP_SEQS = 8  # sequences per SDPA call in `_decode_grouped`
_GATHER = threading.local()  # per thread: {(k or v, cache dtype, device, page shape): page buffer}


def gather_buffer(cache: torch.Tensor, pages: int, which: str) -> torch.Tensor:
    """A [pages, *page shape] buffer for the K or V pages of a CPU decode, kept and reused by later calls: a
    fresh multi-MB tensor per layer and step is fresh memory for the allocator to fault in. Each thread keeps
    the largest it has needed (one decode step's gathered pages) until it ends."""
    buffers = getattr(_GATHER, "buffers", None)
    if buffers is None:
        buffers = _GATHER.buffers = {}
    key = (which, cache.dtype, cache.device, tuple(cache.shape[1:]))
    buf = buffers.get(key)
    if buf is None or buf.shape[0] < pages:
        buf = buffers[key] = cache.new_empty((pages, *cache.shape[1:]))
    return buf[:pages]


def length_groups(lens: list[int], most: int = DECODE_GROUP_SEQS) -> list[list[int]]:
    """Sequence indices sorted by length, cut into groups of at most `most` whose padding to the group's
    longest adds at most a third to their keys."""
    groups: list[list[int]] = []
    total = 0
    for s in sorted(range(len(lens)), key=lens.__getitem__):  # ascending: the newest member is the longest
        if groups and len(groups[-1]) < most and 3 * (len(groups[-1]) + 1) * lens[s] <= 4 * (total + lens[s]):
            groups[-1].append(s)
            total += lens[s]
        else:
            groups.append([s])
            total = lens[s]
    return groups


def _decode_grouped(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lens: list[int],
                    block_tables: torch.Tensor, scale: float) -> torch.Tensor:
    """One SDPA call per group of similar lengths (`length_groups`), over their pages gathered into the
    same two reused buffers, a key mask only where the group's lengths differ. The GQA group of each
    single query token are the query rows of its kv head (as in `attend`). On the 2-core CPU, SmolLM2's
    9/3 heads, 32 contexts of 100-640 tokens, 2 threads: 5.3 ms a layer against 8.5 ms for one call per
    sequence (whose 3 heads leave a thread idle; one thread: about even).

    Tried against it (same shapes, cold caches, interleaved; this path 6.0-6.7 ms a layer, about 2.3 of it
    the gathers at copy bandwidth): SDPA's own cost is compute (hot data is as slow: ~60-100 ns per key and
    kv head at 3 query rows), so pages read in place did not pay: per-page flash calls merged by their
    log-sum-exp 8.9 ms, per-page bmm 45, a numba loop over the pages 6.0-6.6; a block-diagonal 9-row GEMM
    ties SDPA; per-head bmm 12; head-major gathers 25x slower; groups of 16 / 32 / all 9.0 / 11.4 / 14.8."""
    num_seqs, q_heads, head_dim = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    rows = q.float().view(num_seqs, kv_heads, q_heads // kv_heads, head_dim)
    out = torch.empty_like(rows)
    groups = length_groups(lens, DECODE_GROUP_SEQS)
    most = max(len(g) * cdiv(lens[g[-1]], block_size) for g in groups)
    k_buf, v_buf = gather_buffer(k_cache, most, "k"), gather_buffer(v_cache, most, "v")
    for group in groups:
        size, longest = len(group), lens[group[-1]]
        n = cdiv(longest, block_size)
        index = torch.tensor(group, device=q.device)
        pages = block_tables[index, :n].flatten()
        shape = (size, n * block_size, kv_heads, head_dim)
        k = gather_pages(k_cache, pages, k_buf[:size * n]).view(shape)[:, :longest].transpose(1, 2)
        v = gather_pages(v_cache, pages, v_buf[:size * n]).view(shape)[:, :longest].transpose(1, 2)
        mask = None
        if lens[group[0]] != longest:
            group_lens = torch.tensor([lens[s] for s in group], device=q.device)
            mask = (torch.arange(longest, device=q.device) < group_lens[:, None])[:, None, None, :]
        out[index] = F.scaled_dot_product_attention(rows[index], k.float(), v.float(), attn_mask=mask, scale=scale)
    return out.view(num_seqs, q_heads, head_dim).to(q.dtype)


def _decode_padded(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lens: list[int],
                   block_tables: torch.Tensor, scale: float, sliding_window: int | None,
                   softcap: float | None) -> torch.Tensor:
    block_size = k_cache.shape[1]
    max_len = max(lens)
    n_blocks = (max_len + block_size - 1) // block_size
    pages = block_tables[:, :n_blocks].flatten()
    shape = (q.shape[0], n_blocks * block_size, *k_cache.shape[2:])
    # index_select gathers whole pages about 2x faster than advanced indexing on CPU (measured on the
    # embedded model's decode step, where this gather was ~18% of the step)
    n_pages = pages.shape[0]
    k = gather_pages(k_cache, pages, gather_buffer(k_cache, n_pages, "k")).view(shape)[:, :max_len]
    v = gather_pages(v_cache, pages, gather_buffer(v_cache, n_pages, "v")).view(shape)[:, :max_len]
    mask = None  # every sequence as long as the longest and no window: every key counts
    if sliding_window is not None or min(lens) != max_len:
        k_pos = torch.arange(max_len, device=q.device)[None, :]
        last = torch.tensor(lens, device=q.device)[:, None] - 1
        mask = k_pos <= last
        if sliding_window is not None:
            mask &= k_pos > last - sliding_window
        mask = mask[:, None, None, :]
    o = attend(q[:, :, None], k.transpose(1, 2), v.transpose(1, 2), mask, scale, softcap)
    return o[:, :, 0].to(q.dtype)


def _validate(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
              block_tables: torch.Tensor, scale: float, sliding_window: int | None = None,
              softcap: float | None = None, *, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    check_attention_args(q, k_cache, v_cache, seq_lens, block_tables, scale, sliding_window, softcap, k_scale,
                         v_scale)
    if q.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"q must have one token per sequence ({seq_lens.shape[0]}), got shape {tuple(q.shape)}")


def random_paged_kv(seq_lens: list[int], kv_heads: int, head_dim: int, block_size: int,
                    dtype: torch.dtype, device: str | torch.device, spare_blocks: int = 1
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random K/V caches and a block table giving each sequence its own pages in shuffled order."""
    blocks = [cdiv(n, block_size) for n in seq_lens]
    total = sum(blocks) + spare_blocks
    shape = (total, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, dtype=dtype, device=device)
    v_cache = torch.randn(shape, dtype=dtype, device=device)
    order = torch.randperm(total, device=device).to(torch.int32)
    table = torch.zeros(len(seq_lens), max(blocks, default=0) or 1, dtype=torch.int32, device=device)
    used = 0
    for s, n in enumerate(blocks):
        table[s, :n] = order[used:used + n]
        used += n
    return k_cache, v_cache, table


def _bench_case(rows: int, dtype: torch.dtype, device: str, context: int | None = None) -> BenchCase:
    """`rows` sequences with Qwen3-4B heads (32 q / 8 kv, head_dim 128; 8 / 2 on CPU), block size 16."""
    # CPU: interpreter-sized; GPU: 256 x 2048 tokens at most (the reference pads K/V to fp32 copies)
    context = context or (24 if device == "cpu" else max(16, min(2048, 2 ** 19 // rows)))
    q_heads, kv_heads = (8, 2) if device == "cpu" else (32, 8)
    lens = [context - 3 * (s % 5) for s in range(rows)]
    k_cache, v_cache, table = random_paged_kv(lens, kv_heads, 128, 16, dtype, device)
    q = torch.randn(rows, q_heads, 128, dtype=dtype, device=device)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    return BenchCase((q, k_cache, v_cache, seq_lens, table, 128 ** -0.5),
                     bytes_moved=2 * sum(lens) * kv_heads * 128 * k_cache.element_size())


paged_decode = register("paged_decode", reference=paged_decode_reference, triton=paged_decode_triton,
                        validate=_validate, bench_case=_bench_case)
