"""Where do the last ~3% between our paged decode and SDPA over contiguous K/V go (batch >= 64)?
Times, interleaved over rounds (medians, GPU time in CUDA graphs, L2 flushed): the default kernel on shuffled
16-token pages; the same kernel when every sequence is one contiguous head-major page (paging removed); a few
2-warp launch configs (bench/results/decode-gap-probe-*.md also records earlier configs); the default kernel
on 16-token pages in allocation order (page lookups kept, scattered reads removed); and SDPA.
`python3 scripts/decode_gap_probe.py [ROUNDS [BLOCK_N:WARPS:STAGES:SPLITS[:SPLIT_P] ...]]` (configs replace CONFIGS;
SPLIT_P 0 rounds P to the cache dtype once, as SDPA does, instead of the exact two-product P.V);
PROBE_SHAPES="1x8192,64x1024" replaces the batch x context shapes; PROBE_FP8=1 stores every paged variant's
cache in fp8 (e4m3) and adds the bf16 default as "default-bf16" (SDPA stays bf16).
"""
import os
import sys

import torch
import torch.nn.functional as F

from flagstack.bench.attention import HEAD_DIM, KV_HEADS, decode_inputs
from flagstack.bench.common import interleaved_medians
from flagstack.ops.attention.common import FP8_KV
from flagstack.ops.attention.paged_decode import DecodeConfig, paged_decode_triton

CONFIGS = [DecodeConfig(64, 1, 2, 4), DecodeConfig(64, 1, 2, 3), DecodeConfig(32, 1, 2, 4)]


def contiguous_pages(batch: int, context: int, q: torch.Tensor) -> tuple:
    """One page per sequence, head-major ([seq, kv_head, token, dim] memory), identity block table."""
    shape = (batch, KV_HEADS, context, HEAD_DIM)
    k = torch.randn(shape, dtype=q.dtype, device=q.device).transpose(1, 2)
    v = torch.randn(shape, dtype=q.dtype, device=q.device).transpose(1, 2)
    table = torch.arange(batch, dtype=torch.int32, device=q.device)[:, None]
    return k, v, table


def probe(batch: int, context: int, rounds: int, configs: list[DecodeConfig]) -> dict:
    q, k, v, lens, table, scale = decode_inputs(batch, context)
    kc, vc, tc = contiguous_pages(batch, context, q)
    ks, vs = kc.transpose(1, 2), vc.transpose(1, 2)  # [seq, kv_head, token, dim] for SDPA: the same bytes
    ordered = torch.arange(table.numel(), dtype=table.dtype, device=table.device).view_as(table)
    variants = {}
    if os.environ.get("PROBE_FP8") == "1":
        kb, vb = k, v
        variants["default-bf16"] = lambda: paged_decode_triton(q, kb, vb, lens, table, scale)
        k, v, kc, vc = (t.to(FP8_KV) for t in (k, v, kc, vc))
    variants |= {"default": lambda: paged_decode_triton(q, k, v, lens, table, scale),
                "ordered": lambda: paged_decode_triton(q, k, v, lens, ordered, scale),
                "one-page": lambda: paged_decode_triton(q, kc, vc, lens, tc, scale),
                "sdpa": lambda: F.scaled_dot_product_attention(q[:, :, None], ks, vs, scale=scale, enable_gqa=True)}
    for cfg in configs:
        name = f"bn{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages} x{cfg.num_splits}" + ("" if cfg.split_p else " p1")
        variants[name] = (
            lambda cfg=cfg: paged_decode_triton(q, k, v, lens, table, scale, config=cfg))
    row = interleaved_medians(variants, rounds, warmup_ms=5, rep_ms=40, cold_graph=True)
    sdpa = row["sdpa"]
    print(f"batch {batch} ctx {context}: " + ", ".join(f"{n} {t:.1f} us ({sdpa / t:.3f}x sdpa)"
                                                       for n, t in row.items()), flush=True)
    del q, k, v, kc, vc, ks, vs
    torch.cuda.empty_cache()
    return row


def config_of(spec: str) -> DecodeConfig:
    """BLOCK_N:WARPS:STAGES:SPLITS[:SPLIT_P] as a DecodeConfig."""
    block_n, warps, stages, splits, split_p = (list(map(int, spec.split(":"))) + [1])[:5]
    return DecodeConfig(block_n=block_n, num_splits=splits, num_warps=warps, num_stages=stages, split_p=bool(split_p))


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    configs = [config_of(spec) for spec in sys.argv[2:]] or CONFIGS
    shapes = os.environ.get("PROBE_SHAPES", "64x1024,256x2048,64x8192")
    for batch, context in (map(int, shape.split("x")) for shape in shapes.split(",")):
        probe(batch, context, rounds, configs)


if __name__ == "__main__":
    main()
