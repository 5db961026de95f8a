"""Rotary kernel variants against Liger under CUDA-graph replay (warm L2, as in a decode step), H100:
`python3 scripts/rotary_probe.py`. Session 8 probe: does loading the token's position before q and k
(cos/sin then wait one round trip less) close the gap to Liger, whose cos/sin come pre-gathered?"""
import importlib

import torch
import triton
import triton.language as tl

from flagstack.bench.common import interleaved_medians
from flagstack.ops.host import next_power_of_2
from flagstack.ops.rotary import _rope_load, _rope_store, _warps, heads_view, rope_cos_sin_cache, rotary_embedding_triton


@triton.jit
def _pos_first_kernel(pos_ptr, q_ptr, k_ptr, cache_ptr, n_q_heads, n_k_heads, q_token_stride, q_head_stride,
                      k_token_stride, k_head_stride, cache_stride, half, IS_NEOX: tl.constexpr,
                      BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + token).to(tl.int64)
    q1p, q2p, q_mask, q1, q2 = _rope_load(q_ptr, token, n_q_heads, q_token_stride, q_head_stride, half,
                                          IS_NEOX, BLOCK_HQ, BLOCK_D)
    k1p, k2p, k_mask, k1, k2 = _rope_load(k_ptr, token, n_k_heads, k_token_stride, k_head_stride, half,
                                          IS_NEOX, BLOCK_HK, BLOCK_D)
    d = tl.arange(0, BLOCK_D)
    row = cache_ptr + pos * cache_stride
    cos = tl.load(row + d, mask=d < half, other=0.0)[None, :]
    sin = tl.load(row + half + d, mask=d < half, other=0.0)[None, :]
    _rope_store(q1p, q2p, q_mask, q1, q2, cos, sin)
    _rope_store(k1p, k2p, k_mask, k1, k2, cos, sin)


def pos_first(positions, q, k, cache, head, warps=None):
    qh, kh = heads_view(q, head), heads_view(k, head)
    half = cache.shape[1] // 2
    bd, bq, bk = next_power_of_2(half), next_power_of_2(qh.shape[1]), next_power_of_2(kh.shape[1])
    _pos_first_kernel[(qh.shape[0],)](positions, qh, kh, cache, qh.shape[1], kh.shape[1], qh.stride(0), qh.stride(1),
                                      kh.stride(0), kh.stride(1), cache.stride(0), half, IS_NEOX=True, BLOCK_HQ=bq,
                                      BLOCK_HK=bk, BLOCK_D=bd, num_warps=warps or _warps(bq + bk, bd))
    return q, k


def main() -> None:
    liger_rope = importlib.import_module("liger_kernel.transformers.functional").liger_rope
    for rows in (256, 4096, 32768):
        q = torch.randn(rows, 32 * 128, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(rows, 8 * 128, dtype=torch.bfloat16, device="cuda")
        cache = rope_cos_sin_cache(128, rows, 1e6, device="cuda")
        pos = torch.arange(rows, device="cuda")
        ref_q, ref_k = rotary_embedding_triton(pos, q.clone(), k.clone(), cache, 128)
        got_q, got_k = pos_first(pos, q.clone(), k.clone(), cache, 128)
        assert torch.equal(ref_q, got_q) and torch.equal(ref_k, got_k)
        cos, sin = cache[:, :64], cache[:, 64:]
        cos_t, sin_t = (torch.cat([c, c], -1)[pos].unsqueeze(0).to(q.dtype) for c in (cos, sin))
        qv, kv = (t.view(1, rows, -1, 128).transpose(1, 2) for t in (q, k))
        variants = {"ours": lambda: rotary_embedding_triton(pos, q, k, cache, 128),
                    "pos_first": lambda: pos_first(pos, q, k, cache, 128),
                    "pos_first_w8": lambda: pos_first(pos, q, k, cache, 128, 8),
                    "liger": lambda: liger_rope(qv, kv, cos_t, sin_t)}
        times = interleaved_medians(variants, rounds=5, cuda_graph=True)
        print(f"rotary {rows} rows (graph, warm L2, median of 5 rounds): "
              + ", ".join(f"{name} {t:.2f} us" for name, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
