"""Batch-1 GEMV whose programs first ask the TMA unit to pull their whole weight slice into L2, H100:
`python3 scripts/gemv_bulk_probe.py`.

Session 9 probe for issue 4. A program of ops/gemv.py streams its BLOCK_N weight rows through registers, one
tile ahead, so the bytes it has in flight are bounded by registers; before the wait for the previous kernel
(PDL) it can only request its first tile. Here each program first issues `cp.async.bulk.prefetch.L2` over its
whole slice (BLOCK_N contiguous rows; one request per thread, no registers held), before that wait, then runs
the same loop, whose loads should then find the slice in L2 or on its way. Timed per Qwen3-4B shape (cold L2,
CUDA graph) and as the 36 x 4 GEMVs of a decode step in one graph (PDL on, as in the engine).

Result (bench/results/gemv-bulk-probe-*.md): slower on every shape and on the step (2.99 against 2.74 ms);
not kept."""
import torch
import triton
import triton.language as tl
from gemv_probe import time_shapes, time_steps  # scripts/ is on the path when a script there runs

from flagstack.ops.gemv import CONFIG, _load_x, gemv_triton
from flagstack.ops.pdl import pdl_launch, pdl_wait


@triton.jit
def _prefetch_slice(w_ptr, row0, rows, k, w_row_stride, ELEM: tl.constexpr, LANES: tl.constexpr):
    """Ask for bytes of rows row0..row0+rows of W (contiguous: w_row_stride == k) to be brought into L2."""
    total = rows.to(tl.int64) * k * ELEM
    piece = tl.cdiv(tl.cdiv(total, LANES), 16) * 16
    start = tl.arange(0, LANES).to(tl.int64) * piece
    size = tl.minimum(tl.maximum(total - start, 0), piece).to(tl.int32)
    addr = w_ptr.to(tl.pointer_type(tl.int8)) + row0.to(tl.int64) * w_row_stride * ELEM + start
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [addr, size], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _bulk_kernel(x_ptr, w_ptr, y_ptr, n, k, w_row_stride, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 ELEM: tl.constexpr, LANES: tl.constexpr, FIRST_TILE: tl.constexpr, USE_PDL: tl.constexpr):
    row0 = tl.program_id(0) * BLOCK_N
    _prefetch_slice(w_ptr, row0, tl.minimum(n - row0, BLOCK_N), k, w_row_stride, ELEM, LANES)
    rows = row0 + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < n
    w_ptrs = w_ptr + rows.to(tl.int64)[:, None] * w_row_stride + cols[None, :]
    if FIRST_TILE:  # the first tile also requested into registers before the wait, as ops/gemv.py does
        w = tl.load(w_ptrs, mask=row_ok[:, None] & (cols < k)[None, :], other=0.0, eviction_policy="evict_first")
        pdl_wait(USE_PDL)
    else:
        pdl_wait(USE_PDL)
        w = tl.load(w_ptrs, mask=row_ok[:, None] & (cols < k)[None, :], other=0.0, eviction_policy="evict_first")
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        x = _load_x(x_ptr, start, cols, k, False)
        acc += w.to(tl.float32) * x[None, :]
        nxt = start + BLOCK_K
        w = tl.load(w_ptrs + nxt, mask=row_ok[:, None] & (nxt + cols < k)[None, :], other=0.0,
                    eviction_policy="evict_first")
    tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=row_ok)


def bulk(first_tile: bool, lanes: int = 128):
    def run(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, k = w.shape
        out = torch.empty(1, n, dtype=x.dtype, device=x.device)
        _bulk_kernel[(triton.cdiv(n, CONFIG["BLOCK_N"]),)](
            x, w, out, n, k, w.stride(0), BLOCK_N=CONFIG["BLOCK_N"], BLOCK_K=CONFIG["BLOCK_K"],
            ELEM=w.element_size(), LANES=lanes, FIRST_TILE=first_tile, **pdl_launch(x.device),
            num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
        return out
    return run


def main() -> None:
    torch.manual_seed(0)
    variants = {"current": gemv_triton, "bulk + first tile": bulk(True), "bulk": bulk(False),
                "bulk 32 lanes + first tile": bulk(True, 32)}
    totals = time_shapes(variants)
    print("sum over the four shapes: " + ", ".join(f"{name} {t:.1f}" for name, t in totals.items()), flush=True)
    time_steps(variants, list(variants), rounds=3)


if __name__ == "__main__":
    main()
