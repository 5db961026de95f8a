"""KV cache layout A/B on the GPU: pages stored [block, token, kv_head, dim] (NHD, the engine's layout) against
[block, kv_head, token, dim] (HND: each head's page one contiguous run), with SDPA over contiguous K/V timed in the
same rounds. The kernels take any strides, so HND is the same logical cache viewed through transposed strides.
Each variant is timed in every round, the rounds interleaved; medians reported.
`python3 scripts/kv_layout_ab.py [ROUNDS]`
"""
import sys

import torch
import torch.nn.functional as F

from flagstack.bench.attention import (HEAD_DIM, KV_HEADS, attention_flops, decode_bytes, decode_inputs,
                                       prefill_inputs)
from flagstack.bench.common import interleaved_medians
from flagstack.ops.attention.paged_decode import paged_decode_triton
from flagstack.ops.attention.varlen import varlen_attention_triton


def hnd(cache: torch.Tensor) -> torch.Tensor:
    """The same values in [block, kv_head, token, dim] memory order, viewed as [block, token, kv_head, dim]."""
    return cache.transpose(1, 2).contiguous().transpose(1, 2)


def decode_point(batch: int, context: int, block_size: int, rounds: int) -> dict:
    q, k, v, lens, table, scale = decode_inputs(batch, context, block_size)
    kh, vh = hnd(k), hnd(v)
    torch.testing.assert_close(paged_decode_triton(q, kh, vh, lens, table, scale),
                               paged_decode_triton(q, k, v, lens, table, scale), rtol=0, atol=0)
    kc = torch.randn(batch, KV_HEADS, context, HEAD_DIM, dtype=q.dtype, device=q.device)
    vc = torch.randn_like(kc)
    variants = {"nhd": lambda: paged_decode_triton(q, k, v, lens, table, scale),
                "hnd": lambda: paged_decode_triton(q, kh, vh, lens, table, scale),
                "sdpa": lambda: F.scaled_dot_product_attention(q[:, :, None], kc, vc, scale=scale, enable_gqa=True)}
    medians = interleaved_medians(variants, rounds, warmup_ms=5, rep_ms=40, cold_graph=True)
    row = {"case": "decode", "batch": batch, "ctx": context, "block_size": block_size}
    row.update({f"{name}_us": us for name, us in medians.items()})
    row["GB/s hnd"] = decode_bytes(batch, context) / row["hnd_us"] / 1e3
    row["nhd/sdpa"] = row["sdpa_us"] / row["nhd_us"]
    row["hnd/sdpa"] = row["sdpa_us"] / row["hnd_us"]
    del q, k, v, kh, vh, kc, vc
    torch.cuda.empty_cache()
    return row


def prefill_point(seqs: int, new: int, cached: int, rounds: int) -> dict:
    args = prefill_inputs(seqs, new, cached)
    q, k, v, rest = args[0], args[1], args[2], args[3:]
    kh, vh = hnd(k), hnd(v)
    variants = {"nhd": lambda: varlen_attention_triton(q, k, v, *rest),
                "hnd": lambda: varlen_attention_triton(q, kh, vh, *rest)}
    flops = attention_flops(seqs, new, cached)
    row = {"case": "prefill" if cached == 0 else "extend", "batch": seqs, "ctx": new + cached, "block_size": 16}
    for name, us in interleaved_medians(variants, rounds, warmup_ms=5, rep_ms=60).items():
        row[f"{name}_us"] = us
        row[f"{name} TFLOP/s"] = flops / us / 1e6
    del args, q, k, v, kh, vh
    torch.cuda.empty_cache()
    return row


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rows = []
    for batch, context in ((64, 1024), (64, 2048), (64, 8192), (256, 1024), (256, 2048), (256, 8192), (1, 8192)):
        for block_size in (16, 64) if batch == 64 and context == 2048 else (16,):
            rows.append(decode_point(batch, context, block_size, rounds))
            print(rows[-1], flush=True)
    for seqs, new, cached in ((1, 4096, 0), (16, 1024, 4096)):
        rows.append(prefill_point(seqs, new, cached, rounds))
        print(rows[-1], flush=True)
    for row in rows:
        print(" | ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
