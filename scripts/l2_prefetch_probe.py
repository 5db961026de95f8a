"""Does pulling the next GEMV's weight into L2 while small kernels run shorten a batch-1 decode chain? H100:
`python3 scripts/l2_prefetch_probe.py`.

Session 9 probe for issue 4. In a batch-1 step the small kernels between the qkv and o projections (q/k norm
and rope, KV write, attention, merge: ~8 us a layer) leave HBM idle, and the o projection then streams its
21 MB from HBM. Here a prefetch kernel issues `cp.async.bulk.prefetch.L2` (Hopper's TMA; fire and forget, no
registers) over the o weight right after the qkv GEMV. The chain per layer: gemv(qkv) [prefetch(o)] then
SMALL rms_norm launches standing in for the small kernels, then gemv(o); 36 layers with their own weights in
one CUDA graph, PDL on as in the engine. Prints the graph replay time of each variant, interleaved rounds.

Result (bench/results/l2-prefetch-probe-*.md): slower in every variant. The kernel after the prefetch waits
for its bulk prefetches to finish, and the o GEMV gains less than that wait costs. Putting the prefetch on a
side branch of the graph (nothing waiting on it) failed stream capture next to PDL launches."""
import statistics

import torch
import triton
import triton.language as tl

from flagstack.bench.common import _replay_ms
from flagstack.ops.gemv import gemv_triton
from flagstack.ops.pdl import pdl_launch, pdl_wait
from flagstack.ops.rms_norm import rms_norm_triton

LAYERS, HIDDEN, QKV, O_IN = 36, 2560, 6144, 4096


@triton.jit
def _prefetch_kernel(ptr, total_bytes, chunk_bytes, LANES: tl.constexpr, USE_PDL: tl.constexpr):
    # Each lane asks for one chunk (a multiple of 16 bytes) of the buffer; the TMA unit fetches it into L2
    # after the program has exited.
    pdl_wait(USE_PDL)
    lane = tl.program_id(0) * LANES + tl.arange(0, LANES)
    start = lane.to(tl.int64) * chunk_bytes
    size = tl.minimum(tl.maximum(total_bytes - start, 0), chunk_bytes).to(tl.int32)
    addr = ptr.to(tl.pointer_type(tl.int8)) + start
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [addr, size], dtype=tl.int32, is_pure=False, pack=1)


def prefetch(w: torch.Tensor, programs: int, lanes: int = 32) -> None:
    total = w.numel() * w.element_size()
    chunk = -(-total // (programs * lanes) // 16) * 16
    _prefetch_kernel[(programs,)](w, total, chunk, LANES=lanes, num_warps=1, **pdl_launch(w.device))


def main() -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    qkv = [torch.randn(QKV, HIDDEN, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(LAYERS)]
    o = [torch.randn(HIDDEN, O_IN, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(LAYERS)]
    norm_w = torch.ones(HIDDEN, device=dev, dtype=torch.bfloat16)
    x = torch.randn(1, HIDDEN, device=dev, dtype=torch.bfloat16)

    def chain(small: int, programs: int | None):
        def run():
            h = x
            for layer in range(LAYERS):
                y = gemv_triton(h, qkv[layer])
                if programs:
                    prefetch(o[layer], programs)
                r = y[:, :HIDDEN]
                for _ in range(small):
                    r = rms_norm_triton(r, norm_w, 1e-6)
                a = torch.cat([r, y[:, HIDDEN:HIDDEN + O_IN - HIDDEN]], dim=1) if small else y[:, :O_IN]
                h = gemv_triton(a, o[layer])
            return h
        return run

    variants = {}
    for small in (0, 4):
        for programs in (None, 8, 64):
            fn = chain(small, programs)
            fn()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            variants[(small, programs)] = graph
    times = {key: [] for key in variants}
    for _ in range(5):
        for key, graph in variants.items():
            times[key].append(_replay_ms(graph, 20))
    gemv_mb = LAYERS * (QKV * HIDDEN + HIDDEN * O_IN) * 2 / 1e6
    for (small, programs), ts in times.items():
        ms = statistics.median(ts)
        print(f"{small} small kernels, prefetch {'off' if not programs else f'{programs} programs'}: "
              f"{ms * 1e3:.1f} us for {LAYERS} layers ({ms * 1e3 / LAYERS:.2f} us a layer; GEMV weights "
              f"{gemv_mb:.0f} MB, {gemv_mb / 1e3 / ms:.2f} TB/s)", flush=True)


if __name__ == "__main__":
    main()
