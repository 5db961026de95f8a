"""Rotary kernel variants against Liger under CUDA-graph replay (warm L2, as in a decode step), H100:
`python3 scripts/rotary_probe.py`. Session 8 probe: does loading the token's position before q and k
(cos/sin then wait one round trip less) close the gap to Liger, whose cos/sin come pre-gathered? (No.)
Session 9 adds: the heads of a token split over 2 programs (half the data per program, twice the
programs), 2 tokens per program (both tokens' loads in flight before the first store), and 2 warps."""
import importlib

import torch
import triton
import triton.language as tl

from flagstack.bench.common import interleaved_medians
from flagstack.ops.host import next_power_of_2
from flagstack.ops.rotary import (_rope_load, _rope_store, _warps, heads_view, rope_cos_sin, rope_cos_sin_cache,
                                  rotary_embedding_triton)


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


@triton.jit
def _split_heads_kernel(pos_ptr, q_ptr, k_ptr, cache_ptr, n_q_heads, n_k_heads, q_token_stride, q_head_stride,
                        k_token_stride, k_head_stride, cache_stride, half, IS_NEOX: tl.constexpr,
                        BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr):
    # program (token, part): q heads part*BLOCK_HQ.. and k heads part*BLOCK_HK.. of the token
    token = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    q_base = q_ptr + part * BLOCK_HQ * q_head_stride
    k_base = k_ptr + part * BLOCK_HK * k_head_stride
    q1p, q2p, q_mask, q1, q2 = _rope_load(q_base, token, n_q_heads - part * BLOCK_HQ, q_token_stride, q_head_stride,
                                          half, IS_NEOX, BLOCK_HQ, BLOCK_D)
    k1p, k2p, k_mask, k1, k2 = _rope_load(k_base, token, n_k_heads - part * BLOCK_HK, k_token_stride, k_head_stride,
                                          half, IS_NEOX, BLOCK_HK, BLOCK_D)
    cos, sin = rope_cos_sin(cache_ptr, pos_ptr, token, cache_stride, half, BLOCK_D)
    _rope_store(q1p, q2p, q_mask, q1, q2, cos, sin)
    _rope_store(k1p, k2p, k_mask, k1, k2, cos, sin)


@triton.jit
def _two_tokens_kernel(pos_ptr, q_ptr, k_ptr, cache_ptr, n_tokens, n_q_heads, n_k_heads, q_token_stride,
                       q_head_stride, k_token_stride, k_head_stride, cache_stride, half, IS_NEOX: tl.constexpr,
                       BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr):
    # tokens 2p and 2p + 1 (n_tokens even here): every load of both before the first store
    t0 = tl.program_id(0).to(tl.int64) * 2
    t1 = t0 + 1
    a1p, a2p, a_mask, a1, a2 = _rope_load(q_ptr, t0, n_q_heads, q_token_stride, q_head_stride, half, IS_NEOX,
                                          BLOCK_HQ, BLOCK_D)
    b1p, b2p, b_mask, b1, b2 = _rope_load(k_ptr, t0, n_k_heads, k_token_stride, k_head_stride, half, IS_NEOX,
                                          BLOCK_HK, BLOCK_D)
    c1p, c2p, c_mask, c1, c2 = _rope_load(q_ptr, t1, n_q_heads, q_token_stride, q_head_stride, half, IS_NEOX,
                                          BLOCK_HQ, BLOCK_D)
    d1p, d2p, d_mask, d1, d2 = _rope_load(k_ptr, t1, n_k_heads, k_token_stride, k_head_stride, half, IS_NEOX,
                                          BLOCK_HK, BLOCK_D)
    cos0, sin0 = rope_cos_sin(cache_ptr, pos_ptr, t0, cache_stride, half, BLOCK_D)
    cos1, sin1 = rope_cos_sin(cache_ptr, pos_ptr, t1, cache_stride, half, BLOCK_D)
    _rope_store(a1p, a2p, a_mask, a1, a2, cos0, sin0)
    _rope_store(b1p, b2p, b_mask, b1, b2, cos0, sin0)
    _rope_store(c1p, c2p, c_mask, c1, c2, cos1, sin1)
    _rope_store(d1p, d2p, d_mask, d1, d2, cos1, sin1)


def variant(kind: str, warps: int | None = None):
    def run(positions, q, k, cache, head):
        qh, kh = heads_view(q, head), heads_view(k, head)
        half = cache.shape[1] // 2
        bd, bq, bk = next_power_of_2(half), next_power_of_2(qh.shape[1]), next_power_of_2(kh.shape[1])
        args = (qh.shape[1], kh.shape[1], qh.stride(0), qh.stride(1), kh.stride(0), kh.stride(1), cache.stride(0),
                half)
        if kind == "split_heads":
            _split_heads_kernel[(qh.shape[0], 2)](positions, qh, kh, cache, *args, IS_NEOX=True, BLOCK_HQ=bq // 2,
                                                  BLOCK_HK=bk // 2, BLOCK_D=bd, num_warps=warps or 4)
        else:
            _two_tokens_kernel[(qh.shape[0] // 2,)](positions, qh, kh, cache, qh.shape[0], *args, IS_NEOX=True,
                                                    BLOCK_HQ=bq, BLOCK_HK=bk, BLOCK_D=bd,
                                                    num_warps=warps or _warps(bq + bk, bd))
        return q, k
    return run


def main() -> None:
    liger_rope = importlib.import_module("liger_kernel.transformers.functional").liger_rope
    for rows in (256, 4096, 32768):
        q = torch.randn(rows, 32 * 128, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(rows, 8 * 128, dtype=torch.bfloat16, device="cuda")
        cache = rope_cos_sin_cache(128, rows, 1e6, device="cuda")
        pos = torch.arange(rows, device="cuda")
        ref_q, ref_k = rotary_embedding_triton(pos, q.clone(), k.clone(), cache, 128)
        split_heads, two_tokens = variant("split_heads"), variant("two_tokens")
        for fn in (pos_first, split_heads, two_tokens):
            got_q, got_k = fn(pos, q.clone(), k.clone(), cache, 128)
            assert torch.equal(ref_q, got_q) and torch.equal(ref_k, got_k)
        cos, sin = cache[:, :64], cache[:, 64:]
        cos_t, sin_t = (torch.cat([c, c], -1)[pos].unsqueeze(0).to(q.dtype) for c in (cos, sin))
        qv, kv = (t.view(1, rows, -1, 128).transpose(1, 2) for t in (q, k))
        variants = {"ours": lambda: rotary_embedding_triton(pos, q, k, cache, 128),
                    "pos_first": lambda: pos_first(pos, q, k, cache, 128),
                    "pos_first_w2": lambda: pos_first(pos, q, k, cache, 128, 2),
                    "split_heads": lambda: split_heads(pos, q, k, cache, 128),
                    "split_heads_w2": lambda: variant("split_heads", 2)(pos, q, k, cache, 128),
                    "two_tokens": lambda: two_tokens(pos, q, k, cache, 128),
                    "two_tokens_w8": lambda: variant("two_tokens", 8)(pos, q, k, cache, 128),
                    "liger": lambda: liger_rope(qv, kv, cos_t, sin_t)}
        times = interleaved_medians(variants, rounds=5, cuda_graph=True)
        print(f"rotary {rows} rows (graph, warm L2, median of 5 rounds): "
              + ", ".join(f"{name} {t:.2f} us" for name, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
