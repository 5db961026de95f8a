"""Batch-1 GEMV variants with more weight bytes in flight per program, H100: `python3 scripts/gemv_probe.py`.

Session 8 probe for issue 4 (batch-1 decode). The kernel in ops/gemv.py keeps one weight tile in flight
ahead of the one it multiplies; 144 of them in one graph run at ~2.68 TB/s against a 2.97 TB/s copy.
Variants: two tiles ahead (row sums per tile, so the fp32 accumulator tile no longer takes registers), and
Triton's own software pipeline (tl.range num_stages) without the manual prefetch. Timed per Qwen3-4B shape
(cold L2, CUDA graph) and as the 36 x 4 GEMVs of a decode step in one graph (PDL on, as in the engine)."""
import itertools

import torch
import triton
import triton.language as tl

from flagstack.bench.common import _replay_ms, cold_graph_time_us
from flagstack.ops.gemv import QWEN3_4B_SHAPES, gemv_triton
from flagstack.ops.pdl import pdl_launch, pdl_wait


@triton.jit
def _ahead2_kernel(x_ptr, w_ptr, y_ptr, n, k, w_row_stride, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   USE_PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < n
    w_ptrs = w_ptr + rows.to(tl.int64)[:, None] * w_row_stride + cols[None, :]
    w0 = tl.load(w_ptrs, mask=row_ok[:, None] & (cols < k)[None, :], other=0.0, eviction_policy="evict_first")
    w1 = tl.load(w_ptrs + BLOCK_K, mask=row_ok[:, None] & (BLOCK_K + cols < k)[None, :], other=0.0,
                 eviction_policy="evict_first")
    pdl_wait(USE_PDL)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        x = tl.load(x_ptr + start + cols, mask=start + cols < k, other=0.0).to(tl.float32)
        acc += tl.sum(w0.to(tl.float32) * x[None, :], axis=1)
        w0 = w1
        nxt = start + 2 * BLOCK_K
        w1 = tl.load(w_ptrs + nxt, mask=row_ok[:, None] & (nxt + cols < k)[None, :], other=0.0,
                     eviction_policy="evict_first")
    tl.store(y_ptr + rows, acc.to(y_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _staged_kernel(x_ptr, w_ptr, y_ptr, n, k, w_row_stride, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   STAGES: tl.constexpr, USE_PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < n
    w_ptrs = w_ptr + rows.to(tl.int64)[:, None] * w_row_stride + cols[None, :]
    pdl_wait(USE_PDL)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for start in tl.range(0, k, BLOCK_K, num_stages=STAGES):
        w = tl.load(w_ptrs + start, mask=row_ok[:, None] & (start + cols < k)[None, :], other=0.0,
                    eviction_policy="evict_first")
        x = tl.load(x_ptr + start + cols, mask=start + cols < k, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * x[None, :]
    tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=row_ok)


def launcher(kind: str, bn: int, bk: int, warps: int, stages: int = 2):
    def run(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, k = w.shape
        out = torch.empty(1, n, dtype=x.dtype, device=x.device)
        grid = (triton.cdiv(n, bn),)
        if kind == "ahead2":
            _ahead2_kernel[grid](x, w, out, n, k, w.stride(0), BLOCK_N=bn, BLOCK_K=bk, **pdl_launch(x.device),
                                 num_warps=warps)
        else:
            _staged_kernel[grid](x, w, out, n, k, w.stride(0), BLOCK_N=bn, BLOCK_K=bk, STAGES=stages,
                                 **pdl_launch(x.device), num_warps=warps)
        return out
    return run


def step_ms(fn, weights, x_of) -> float:
    """One graph of the 36 x 4 GEMVs of a decode step, each reading its own weight (7.3 GB in all)."""
    graph = torch.cuda.CUDAGraph()
    for w in weights[:4]:
        fn(x_of[w.shape[1]], w)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        for w in weights:
            fn(x_of[w.shape[1]], w)
    graph.replay()
    return _replay_ms(graph, 20)


def time_shapes(variants: dict, best: int | None = None) -> dict[str, float]:
    """Per Qwen3-4B shape, check each variant against F.linear and time it (cold L2, CUDA graph); print the
    `best` fastest besides 'current' (all if None). A variant that fails (e.g. out of resources) is dropped
    from `variants`. Returns each variant's time summed over the shapes."""
    totals = dict.fromkeys(variants, 0.0)
    for n, k in QWEN3_4B_SHAPES:
        x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") / k ** 0.5
        ref = torch.nn.functional.linear(x.float(), w.float())
        line = {}
        for name, fn in list(variants.items()):
            try:
                torch.testing.assert_close(fn(x, w).float(), ref, rtol=0.016, atol=2e-2)
                line[name] = cold_graph_time_us(lambda: fn(x, w))
            except Exception as err:  # noqa: BLE001 -- a config out of resources is dropped
                print(f"  {name} {n}x{k}: {type(err).__name__} {str(err)[:60]}")
                del variants[name], totals[name]
                continue
            totals[name] += line[name]
        shown = list(line) if best is None else sorted(line, key=line.get)[:best]
        print(f"{n}x{k}: current {line['current']:.1f} us; "
              + ", ".join(f"{name} {line[name]:.1f}" for name in shown if name != "current"), flush=True)
    return totals


def time_steps(variants: dict, names: list[str], rounds: int) -> None:
    """Print the step time (36 x 4 GEMVs in one graph, PDL on) of each named variant, `rounds` interleaved rounds."""
    weights = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") for _ in range(36) for n, k in QWEN3_4B_SHAPES]
    x_of = {k: torch.randn(1, k, dtype=torch.bfloat16, device="cuda") for _, k in QWEN3_4B_SHAPES}
    gb = sum(w.numel() * 2 for w in weights) / 1e9
    for rnd in range(rounds):
        for name in names:
            ms = step_ms(variants[name], weights, x_of)
            print(f"round {rnd} step of 144 GEMVs, {name}: {ms:.3f} ms ({gb / ms:.2f} TB/s)", flush=True)


def main() -> None:
    torch.manual_seed(0)
    variants = {"current": gemv_triton}
    for bn, bk, warps in itertools.product((4, 8, 16), (512, 1024), (4, 8)):
        variants[f"ahead2 {bn}x{bk} w{warps}"] = launcher("ahead2", bn, bk, warps)
    for bn, bk, warps, stages in itertools.product((8, 16), (512, 1024), (4, 8), (3, 4)):
        variants[f"staged {bn}x{bk} w{warps} s{stages}"] = launcher("staged", bn, bk, warps, stages)
    totals = time_shapes(variants, best=3)
    ranked = sorted((t, name) for name, t in totals.items())
    print("sum over the four shapes:", ", ".join(f"{name} {t:.1f}" for t, name in ranked[:8]), flush=True)
    time_steps(variants, ["current"] + [name for _, name in ranked if name != "current"][:4], rounds=2)


if __name__ == "__main__":
    main()
