"""Paged decode at the engine's batch 256 with short contexts (CUDA graph timing, tables padded to the engine's
4096-token width): which tile config is fastest there? `python3 scripts/decode_short_sweep.py`."""
import torch

from flagstack.bench.attention import _sweep_one, decode_bytes, decode_inputs
from flagstack.ops.attention.paged_decode import DecodeConfig, paged_decode_triton

rows = []
for batch, context in ((256, 144), (256, 400), (256, 1024)):
    q, k_cache, v_cache, seq_lens, table, scale = decode_inputs(batch, context)
    padded = torch.zeros(batch, 256, dtype=table.dtype, device=table.device)
    padded[:, :table.shape[1]] = table
    args = (q, k_cache, v_cache, seq_lens, padded, scale)
    configs = [None] + [DecodeConfig(bn, 1, w, st) for bn in (32, 64, 128) for w in (4, 8) for st in (2, 3)]
    for cfg in configs:
        label = {"batch": batch, "ctx": context, "config": str(cfg) if cfg else "default"}
        rows.append(_sweep_one(label, lambda: paged_decode_triton(*args, config=cfg),
                               {"warmup_ms": 5, "rep_ms": 20, "cold_graph": True}, decode_bytes(batch, context)))
    del args, k_cache, v_cache
    torch.cuda.empty_cache()
