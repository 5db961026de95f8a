"""Do Hopper TMA page loads close the last ~3% between paged decode and SDPA at batch >= 64?

The default kernel gathers each 64-token K/V tile with per-token pointer loads (cp.async, 256 bytes a row, rows
2 KB apart). Here each 16-token page of one kv head ([16, 128] bf16, 4 KB) is one TMA copy through a device-side
tensor descriptor over the cache seen as [blocks * block_size, kv_heads * head_dim]: no per-row addresses, and
the copy engine instead of the threads moves the bytes. PAGES pages are loaded per loop step, each folded into
the online softmax as a 16-key sub-tile. One program per (sequence, kv head), as the default unsplit launch.
Results are checked against the reference first; then times, interleaved over rounds (medians, GPU time in
CUDA graphs, L2 flushed), against the default kernel and SDPA over contiguous K/V.
`python3 scripts/decode_tma_probe.py [ROUNDS [PAGES:WARPS:STAGES ...]]`; PROBE_SHAPES="64x1024" replaces the
batch x context shapes. `TRITON_INTERPRET=1 python3 scripts/decode_tma_probe.py --check` checks results on CPU.
Result on an H200 (bench/results/decode-tma-probe-nvidia-h200-2026-11-29.md): 0.42-0.95x SDPA, every variant slower
than the default kernel (0.96-0.97x); not moved into paged_decode.
"""
import os
import sys

import torch
import triton
import triton.language as tl

from flagstack.ops.attention.common import dot_precision, score_scale, softmax_tile_step, upcast_for_interpreter
from flagstack.ops.attention.paged_decode import paged_decode_reference, random_paged_kv
from flagstack.ops.host import next_power_of_2


@triton.jit
def _tma_decode_kernel(q_ptr, k_cache_ptr, v_cache_ptr, seq_lens_ptr, block_tables_ptr, out_ptr,
                       q_stride_s, q_stride_h, bt_stride_s, out_stride_s, out_stride_h, cache_rows, qk_scale,
                       KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
                       BLOCK_SIZE: tl.constexpr, PAGES: tl.constexpr, UPCAST: tl.constexpr,
                       PRECISION: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    # the cache as a 2-D table: row = block * BLOCK_SIZE + offset, column = kv_head * HEAD_DIM + dim
    k_desc = tl.make_tensor_descriptor(k_cache_ptr, shape=[cache_rows, KV_HEADS * HEAD_DIM],
                                       strides=[KV_HEADS * HEAD_DIM, 1], block_shape=[BLOCK_SIZE, HEAD_DIM])
    v_desc = tl.make_tensor_descriptor(v_cache_ptr, shape=[cache_rows, KV_HEADS * HEAD_DIM],
                                       strides=[KV_HEADS * HEAD_DIM, 1], block_shape=[BLOCK_SIZE, HEAD_DIM])
    seq_len = tl.load(seq_lens_ptr + seq).to(tl.int32)
    rows = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + rows
    row_ok = rows < GROUP
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + seq * q_stride_s + heads[:, None] * q_stride_h + dims[None, :], mask=row_ok[:, None],
                other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    table = block_tables_ptr + seq * bt_stride_s
    n_pages = tl.cdiv(seq_len, BLOCK_SIZE)
    for first in range(0, n_pages, PAGES):
        for j in tl.static_range(PAGES):
            index = first + j
            # a page past the end reads the sequence's first page again; its keys are masked out below
            page = tl.load(table + tl.where(index < n_pages, index, 0)).to(tl.int32)
            k = k_desc.load([page * BLOCK_SIZE, kv_head * HEAD_DIM])
            v = v_desc.load([page * BLOCK_SIZE, kv_head * HEAD_DIM])
            keys = index * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
            acc, m_i, l_i = softmax_tile_step(acc, m_i, l_i, q, k, v, (keys < seq_len)[None, :], qk_scale, 0.0,
                                              True, False, UPCAST, PRECISION, True)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + seq * out_stride_s + heads[:, None] * out_stride_h + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def _scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Global scratch for the device-side descriptors (Triton asks for it once per launch)."""
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


def tma_decode(q, k_cache, v_cache, seq_lens, block_tables, scale, pages=4, num_warps=4, num_stages=3):
    """Paged decode (no window, no softcap, contiguous caches) with per-page TMA loads."""
    num_seqs, q_heads, head_dim = q.shape
    out = torch.empty_like(q)
    blocks, block_size, kv_heads, _ = k_cache.shape
    group = q_heads // kv_heads
    qk_scale, _ = score_scale(scale, None)
    triton.set_allocator(_scratch)
    _tma_decode_kernel[(num_seqs, kv_heads)](
        q, k_cache, v_cache, seq_lens, block_tables, out, q.stride(0), q.stride(1), block_tables.stride(0),
        out.stride(0), out.stride(1), blocks * block_size, qk_scale, KV_HEADS=kv_heads, GROUP=group,
        BLOCK_G=max(16, next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_SIZE=block_size, PAGES=pages,
        UPCAST=upcast_for_interpreter(q.dtype), PRECISION=dot_precision(q.dtype), num_warps=num_warps,
        num_stages=num_stages)
    return out


def check(device: str, dtype: torch.dtype) -> None:
    """Against the reference: lengths 1, 15, 16, 17, 64, 65, 200 (page boundaries, partial groups of pages)."""
    lens = [1, 15, 16, 17, 64, 65, 200]
    for group, pages in ((1, 1), (4, 4), (4, 3)):
        k, v, table = random_paged_kv(lens, 2, 64, 16, dtype, device)
        q = torch.randn(len(lens), 2 * group, 64, dtype=dtype, device=device)
        seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
        err = (tma_decode(q, k, v, seq_lens, table, 0.125, pages=pages).float()
               - paged_decode_reference(q, k, v, seq_lens, table, 0.125).float()).abs().max().item()
        print(f"check group {group} pages {pages} {dtype}: max err {err:.2e}", flush=True)
        assert err < (2e-2 if dtype == torch.bfloat16 else 2e-3), err


def main() -> None:
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if "--check" in sys.argv:
        check("cpu" if interpreted else "cuda", torch.float32 if interpreted else torch.bfloat16)
        return
    from flagstack.bench.attention import probe_against_sdpa
    check("cuda", torch.bfloat16)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    specs = sys.argv[2:] or ["4:4:3", "4:4:4", "4:2:4", "2:4:4", "8:4:3", "4:8:3"]

    def variants(args: tuple) -> dict:
        out = {}
        for spec in specs:
            pages, warps, stages = map(int, spec.split(":"))
            out[f"tma {spec}"] = lambda p=pages, w=warps, s=stages: tma_decode(*args, p, w, s)
        return out

    probe_against_sdpa(os.environ.get("PROBE_SHAPES", "64x1024,256x2048,64x8192"), rounds, variants)

if __name__ == "__main__":
    main()
