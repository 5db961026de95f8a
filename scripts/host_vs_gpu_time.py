"""Small-shape check of the challenge ops' timings: do_bench (host time shows past its L2 flush) against
GPU time alone (CUDA graph replay), to tell host-bound cells from slow kernels. CUDA only."""
import torch

from flagstack.bench.common import time_us
from flagstack.ops import registry

CASES = [("tril", 1024, 1024, torch.float32), ("roll", 1024, 1024, torch.float32),
         ("smooth_l1_loss", 1024, 1024, torch.float32), ("pixel_unshuffle", 1024, 32, torch.bfloat16),
         ("avg_pool3d", 1024, 32, torch.bfloat16), ("upsample_nearest2d", 1024, 64, torch.bfloat16),
         ("leaky_relu", 4096, 4096, torch.float32), ("grid_sample", 1024, 64, torch.float32),
         ("conv_transpose2d", 1024, 32, torch.bfloat16), ("conv_transpose2d", 4096, 64, torch.bfloat16)]

for op, rows, cols, dtype in CASES:
    entry = registry.get(op)
    case = entry.bench_case(rows, dtype, "cuda", cols=cols)
    for name, fn in (("triton", entry.triton), ("torch", entry.reference)):
        call = lambda: fn(*case.args, **case.kwargs)  # noqa: E731
        print(f"{op} {rows}x{cols} {str(dtype)[6:]} {name}: do_bench {time_us(call, 'cuda'):.1f} us, "
              f"graph {time_us(call, 'cuda', cuda_graph=True):.1f} us", flush=True)
