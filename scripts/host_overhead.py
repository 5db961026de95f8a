"""Host vs GPU time of each challenge op's core shapes (H100): `python3 scripts/host_overhead.py [OP ...]`;
an LLM op (no core shapes) is timed at 256 rows in bf16, its bench case's shape.

The scorecard times with triton.testing.do_bench, whose L2 flush (~80 us of GPU work) hides host time only
up to that much: an op whose wrapper takes longer to launch than the flush runs shows its host time
instead of its GPU time. This prints, per op, shape and implementation: host us per call (200 calls
queued without a sync), GPU us per call (replayed from a CUDA graph), and the do_bench median.
With FLAGSTACK_CPROFILE=N, also the N Python functions where the triton wrapper spends the most time."""
import cProfile
import os
import pstats
import statistics
import sys
import time

import torch
import triton.testing

from flagstack.ops import registry
from flagstack.ops.score import CORE_SHAPES


def host_us(fn, calls: int = 200) -> float:
    """Median over 5 rounds of the host time per call, the GPU kept busy so the queue never drains."""
    rounds = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    torch.cuda.synchronize()
    return statistics.median(rounds)


def main() -> None:
    for op in sys.argv[1:] or list(CORE_SHAPES):
        entry = registry.get(op)
        for rows, cols, dtype in CORE_SHAPES.get(op, [(256, None, torch.bfloat16)]):
            case = entry.bench_case(rows, dtype, "cuda", **({} if cols is None else {"cols": cols}))
            for name, impl in (("triton", entry.triton), ("torch", entry.reference)):
                fn = lambda: impl(*case.args, **case.kwargs)  # noqa: E731
                fn()
                try:
                    gpu = 1e3 * triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
                except Exception as err:  # noqa: BLE001 -- an op that syncs cannot be captured
                    gpu = float("nan")
                bench = 1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
                print(f"{op:24s} {rows}x{cols} {str(dtype)[6:]:9s} {name:7s} host {host_us(fn):7.1f} us  "
                      f"gpu {gpu:7.1f} us  do_bench {bench:7.1f} us", flush=True)
                top = int(os.environ.get("FLAGSTACK_CPROFILE", "0"))
                if top and name == "triton":
                    profiler = cProfile.Profile()
                    profiler.runcall(lambda: [fn() for _ in range(500)])
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    main()
