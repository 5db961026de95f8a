"""conv_transpose2d's core shapes (16x64x64x64 and 4x64x32x32 * 64x32x3x3, stride 2, bf16) on CUDA: GPU time
(graph replay) and wall time (do_bench, L2 flushed) of torch's call and ours under launch configs
(pixel tile, warps, stages), interleaved. `python3 scripts/conv_probe.py`"""
import importlib

import torch

from flagstack.bench.common import interleaved_medians

ct = importlib.import_module("flagstack.ops.challenge.conv_transpose2d")
CONFIGS = ((128, 4, 3), (64, 4, 3), (64, 4, 1), (128, 8, 3), (64, 2, 3), (32, 2, 3), (128, 4, 1))


def configured(x, w, block_m, warps, stages):
    """Our call under one launch config (restored after)."""
    saved = dict(ct.CUDA_CONFIG)
    ct.CUDA_CONFIG.update(BLOCK_M=block_m, num_warps=warps, num_stages=stages)
    try:
        return ct.conv_transpose2d_triton(x, w, None, 2)
    finally:
        ct.CUDA_CONFIG.update(saved)


for batch, side in ((16, 64), (4, 32)):
    x = torch.randn(batch, 64, side, side, device="cuda").to(torch.bfloat16)
    w = torch.randn(64, 32, 3, 3, device="cuda").to(torch.bfloat16)
    ref = torch.nn.functional.conv_transpose2d(x, w, None, 2)
    variants = {"torch": lambda: torch.nn.functional.conv_transpose2d(x, w, None, 2)}
    for cfg in CONFIGS:
        out = configured(x, w, *cfg)
        print(batch, side, cfg, "max err vs torch", (out.float() - ref.float()).abs().max().item(), flush=True)
        variants[f"ours bm{cfg[0]} w{cfg[1]} s{cfg[2]}"] = lambda cfg=cfg: configured(x, w, *cfg)
    for label, timing in (("GPU us (graph)", {"cuda_graph": True}), ("wall us (do_bench)", {})):
        for name, us in interleaved_medians(variants, 3, device="cuda", **timing).items():
            print(f"{batch}x64x{side}x{side} {label} {name}: {us:.1f}", flush=True)
