"""Why a small op's do_bench time sometimes shows its host time (H100): `python3 scripts/alloc_probe.py`.

Prints the host time of torch.empty spelled several ways, 2 MB and 33 MB, with the GPU idle and busy, and
do_bench of pixel_unshuffle's small core shape (ours and torch's) five times in a row."""
import torch
import triton.testing
from host_overhead import host_us  # scripts/ is on the path when a script there runs

from flagstack.ops import registry


dev = torch.device("cuda", 0)
busy = torch.empty(1 << 28, dtype=torch.int32, device=dev)
for mb in (2, 33):
    n = mb << 19  # bf16 elements
    shape = [n // 4096, 64, 64]
    variants = {
        "empty(list, dtype, device obj)": lambda: torch.empty(shape, dtype=torch.bfloat16, device=dev),
        "empty(tuple, dtype, 'cuda')": lambda: torch.empty(tuple(shape), dtype=torch.bfloat16, device="cuda"),
        "empty(..., memory_format)": lambda: torch.empty(shape, dtype=torch.bfloat16, device=dev,
                                                         memory_format=torch.contiguous_format),
        "new_empty": lambda: busy.new_empty(shape, dtype=torch.bfloat16),
    }
    for name, fn in variants.items():
        idle = host_us(fn, 500)
        def loaded():
            busy.zero_()
            fn()
        print(f"{mb:3d} MB {name:34s} idle {idle:6.1f} us  with a 1 GB zero_ queued each call "
              f"{host_us(loaded, 100):6.1f} us", flush=True)

entry = registry.get("pixel_unshuffle")
case = entry.bench_case(1024, torch.bfloat16, "cuda", cols=32)
for name, impl in (("triton", entry.triton), ("torch", entry.reference)):
    fn = lambda: impl(*case.args, **case.kwargs)  # noqa: E731
    runs = [1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") for _ in range(5)]
    print(f"pixel_unshuffle 1024x32 bf16 {name}: do_bench medians " + " ".join(f"{r:.1f}" for r in runs), flush=True)
