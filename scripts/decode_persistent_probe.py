"""Does a persistent decode kernel close the last ~3% to SDPA at batch >= 64?

The unsplit kernel runs one program per (sequence, kv head); each program fills its software pipeline
(num_stages K/V tiles) from cold and drains it at the end, ~4 times per SM at batch 64 x 8 kv heads. Here a
fixed number of programs (PER_SM x SMs) walks its items (sequence, kv head) as one flat loop over all of their
K/V tiles, so the pipeline keeps prefetching across an item's end into the next item's first tiles. The
output of an item is written when its last tile is done. Correctness is checked against the default kernel
first; then times, interleaved over rounds (medians, GPU time in CUDA graphs, L2 flushed), against the
default kernel and SDPA over contiguous K/V.
`python3 scripts/decode_persistent_probe.py [ROUNDS [[f]PER_SM:WARPS:STAGES ...]]` (f: the nested loops
flattened by Triton instead of the hand-written flat loop);
PROBE_SHAPES="64x1024,256x2048" replaces the batch x context shapes. TRITON_INTERPRET=1 on CPU checks the
kernel's results only (`--check`).
"""
import os
import sys

import torch
import triton
import triton.language as tl

from flagstack.ops.attention.common import dot_precision, score_scale, upcast_for_interpreter
from flagstack.ops.attention.paged_decode import _decode_tile, paged_decode_reference
from flagstack.ops.host import next_power_of_2, sm_count

BLOCK_N = 64


@triton.jit
def _item(item, kv_heads, q_ptr, k_cache_ptr, v_cache_ptr, seq_lens_ptr, block_tables_ptr, q_stride_s, q_stride_h,
          kc_stride_h, vc_stride_h, bt_stride_s, rows, row_ok, dims, GROUP: tl.constexpr):
    """Work item (sequence, kv head): its sequence, length, q heads, q rows, page-table row and K/V head bases."""
    seq = (item // kv_heads).to(tl.int64)
    kv_head = item % kv_heads
    heads = kv_head * GROUP + rows
    q = tl.load(q_ptr + seq * q_stride_s + heads[:, None] * q_stride_h + dims[None, :], mask=row_ok[:, None],
                other=0.0)
    return (seq, tl.load(seq_lens_ptr + seq), heads, q, block_tables_ptr + seq * bt_stride_s,
            k_cache_ptr + kv_head * kc_stride_h, v_cache_ptr + kv_head * vc_stride_h)


@triton.jit
def _persistent_decode_kernel(q_ptr, k_cache_ptr, v_cache_ptr, seq_lens_ptr, block_tables_ptr, out_ptr,
                              q_stride_s, q_stride_h, kc_stride_b, kc_stride_t, kc_stride_h,
                              vc_stride_b, vc_stride_t, vc_stride_h, bt_stride_s, out_stride_s, out_stride_h,
                              num_items, kv_heads, qk_scale,
                              GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
                              BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
                              PRECISION: tl.constexpr, FLATTEN: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    rows = tl.arange(0, BLOCK_G)
    row_ok = rows < GROUP
    dims = tl.arange(0, HEAD_DIM)
    if FLATTEN:  # nested loops, fused into one pipelined loop by Triton's loop-nest flattening
        for item in tl.range(pid, num_items, programs, flatten=True):
            seq, seq_len, heads, q, table, k_head, v_head = _item(
                item, kv_heads, q_ptr, k_cache_ptr, v_cache_ptr, seq_lens_ptr, block_tables_ptr, q_stride_s,
                q_stride_h, kc_stride_h, vc_stride_h, bt_stride_s, rows, row_ok, dims, GROUP)
            m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_G], tl.float32)
            acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
            for start in range(0, seq_len, BLOCK_N):
                acc, m_i, l_i = _decode_tile(acc, m_i, l_i, q, start, seq_len, 0, table, k_head, v_head,
                                             kc_stride_b, kc_stride_t, vc_stride_b, vc_stride_t, qk_scale, 0.0,
                                             HEAD_DIM, BLOCK_SIZE, BLOCK_N, False, False, UPCAST, PRECISION, True)
            out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
            tl.store(out_ptr + seq * out_stride_s + heads[:, None] * out_stride_h + dims[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:  # one hand-written loop over all the program's tiles, (item, tile) carried from step to step
        total = 0  # first pass: how many K/V tiles this program's items hold (a few scalar loads)
        for item in range(pid, num_items, programs):
            total += tl.cdiv(tl.load(seq_lens_ptr + item // kv_heads), BLOCK_N)
        item = pid
        tile = 0
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
        for _ in range(total):
            seq, seq_len, heads, q, table, k_head, v_head = _item(
                item, kv_heads, q_ptr, k_cache_ptr, v_cache_ptr, seq_lens_ptr, block_tables_ptr, q_stride_s,
                q_stride_h, kc_stride_h, vc_stride_h, bt_stride_s, rows, row_ok, dims, GROUP)
            acc, m_i, l_i = _decode_tile(acc, m_i, l_i, q, tile * BLOCK_N, seq_len, 0, table, k_head, v_head,
                                         kc_stride_b, kc_stride_t, vc_stride_b, vc_stride_t, qk_scale, 0.0,
                                         HEAD_DIM, BLOCK_SIZE, BLOCK_N, False, False, UPCAST, PRECISION, True)
            tile += 1
            if tile * BLOCK_N >= seq_len:  # the item's last tile: write it, move on to the next item
                out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
                tl.store(out_ptr + seq * out_stride_s + heads[:, None] * out_stride_h + dims[None, :],
                         out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
                item += programs
                tile = 0
                m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
                l_i = tl.zeros([BLOCK_G], tl.float32)
                acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)


def persistent_decode(q, k_cache, v_cache, seq_lens, block_tables, scale, per_sm=1, num_warps=2, num_stages=4,
                      flat=False):
    """Paged decode (no window, no softcap) with PER_SM x SMs persistent programs."""
    num_seqs, q_heads, head_dim = q.shape
    out = torch.empty_like(q)
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    items = num_seqs * kv_heads
    programs = min(items, per_sm * sm_count(q.device, cpu=8))
    qk_scale, _ = score_scale(scale, None)
    _persistent_decode_kernel[(programs,)](
        q, k_cache, v_cache, seq_lens, block_tables, out,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1), items, kv_heads, qk_scale,
        GROUP=group, BLOCK_G=max(16, next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_N=BLOCK_N, UPCAST=upcast_for_interpreter(q.dtype), PRECISION=dot_precision(q.dtype),
        FLATTEN=flat, num_warps=num_warps, num_stages=num_stages)
    return out


def check(device: str, dtype: torch.dtype) -> None:
    """Results against the PyTorch reference on mixed lengths (1, 15, 16, 17, 64, 65, 200, 1000) and shuffled pages."""
    from flagstack.ops.attention.paged_decode import random_paged_kv
    lens = [1, 15, 16, 17, 64, 65, 200, 1000, 3, 130]
    for group in (1, 4):
        k, v, table = random_paged_kv(lens, 2, 64, 16, dtype, device)
        q = torch.randn(len(lens), 2 * group, 64, dtype=dtype, device=device)
        seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
        want = paged_decode_reference(q, k, v, seq_lens, table, 0.125)
        for per_sm, flat in ((1, False), (2, False), (1, True), (2, True)):
            got = persistent_decode(q, k, v, seq_lens, table, 0.125, per_sm=per_sm, flat=flat)
            err = (got.float() - want.float()).abs().max().item()
            print(f"check group {group} per_sm {per_sm} flat {flat} {dtype}: max err {err:.2e}", flush=True)
            assert err < (2e-2 if dtype == torch.bfloat16 else 2e-3), err


def main() -> None:
    if "--check" in sys.argv:
        check("cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda",
              torch.float32 if os.environ.get("TRITON_INTERPRET") == "1" else torch.bfloat16)
        return
    from flagstack.bench.attention import probe_against_sdpa
    check("cuda", torch.bfloat16)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    specs = sys.argv[2:] or ["f1:2:4", "f2:2:3", "f1:4:4", "f2:4:2", "4:2:3"]

    def variants(args: tuple) -> dict:
        out = {}
        for spec in specs:
            per_sm, warps, stages = map(int, spec.removeprefix("f").split(":"))
            out[f"persistent {spec}"] = (lambda p=per_sm, w=warps, s=stages, f=spec.startswith("f"):
                                         persistent_decode(*args, p, w, s, f))
        return out

    probe_against_sdpa(os.environ.get("PROBE_SHAPES", "64x1024,64x2048,256x1024,256x2048,64x8192"), rounds,
                       variants)

if __name__ == "__main__":
    main()
