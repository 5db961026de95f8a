"""Where the time of a challenge op's core-shape call goes on CUDA, ours against torch's: per-kernel GPU time
(torch.profiler) and the wall time of the whole call (bench.common.time_us).
`python3 scripts/challenge_profile.py ctc_loss:4096:64:float32 conv_transpose2d:4096:64:bfloat16`"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from flagstack.bench.common import time_us
from flagstack.ops import registry

for spec in sys.argv[1:] or ["ctc_loss:4096:64:float32", "conv_transpose2d:4096:64:bfloat16"]:
    op, rows, cols, dtype = spec.split(":")
    entry = registry.get(op)
    case = entry.bench_case(int(rows), getattr(torch, dtype), "cuda", cols=int(cols))
    for name, fn in (("triton", entry.triton), ("torch", entry.reference)):
        call = lambda: fn(*case.args, **case.kwargs)  # noqa: E731
        wall = time_us(call, "cuda")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                call()
            torch.cuda.synchronize()
        print(f"== {spec} {name}: {wall:.1f} us per call", flush=True)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))
