"""Matrix-vector product for batch-1 decode: y[N] = W[N, K] @ x[K] (a Linear layer on one token).

At one token a decoder step is a stream of weight reads: Qwen3-4B reads 202 MB of projection
weights per layer, and every byte of W is used once. cuBLAS picks split-K GEMM tiles for these shapes
(plus a reduce kernel for two of the four). Here each program owns BLOCK_N whole rows of W and walks
K in BLOCK_K slices, so the kernel reads W once (N*K*elem bytes), x from L2, writes N outputs, and
needs no second pass. Products are accumulated in fp32 per lane, summed across K once at the end.
Memory traffic per call: N*K*elem + K*elem + N*elem bytes; e.g. gate_up (19456 x 2560 bf16) 99.6 MB,
33 us at 3.0 TB/s.

`silu_mul_gemv` is the MLP's down projection with silu_and_mul folded into the x loads: x is the
gate_up output [gate | up] (2K), and each program forms silu(gate) * up for its x tile in fp32, rounded
to x's dtype as the silu_and_mul kernel rounds it, so the result equals silu_and_mul then gemv up to
the last bits of exp. It saves a launch and the act round trip (3K elem written and read back) at the
price of 2K elem of x per program from L2 (Qwen3-4B down: 39 KB beside a 156 KB weight slice).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from flagstack.ops.activation import _activate
from flagstack.ops.checks import check_same_device, check_tensor
from flagstack.ops.host import cdiv, sm_count
from flagstack.ops.launch_cache import launch
from flagstack.ops.pdl import pdl_launch, pdl_wait
from flagstack.ops.registry import BenchCase, register

# From sweep() (cold L2, CUDA graphs, bf16), summed over the four Qwen3-4B shapes: on an H100 4 or 8 rows x
# 1024 columns, 4 warps, 2 stages tied for best, 87.9 us against cuBLAS's 103.4 us (2026-11-27); on an H200
# 4 rows read 70.6 us against 74.3 for 8 and cuBLAS's 83.0 (bench/results/gemv-sweep-nvidia-h200-*).
CONFIG = {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 2}
# A program's weight stream is latency-bound: bandwidth comes from many programs per SM. Short weights
# (N < 8 rows x 2 programs x SMs) get fewer rows per program so that every SM still holds two or more.
PROGRAMS_PER_SM = 2
H100_SMS = 132  # used off CUDA, so that CPU tests take the configs an H100 takes for the same shapes


def rows_per_program(n: int, sms: int) -> int:
    """CONFIG's BLOCK_N halved (down to 1) while n rows would give fewer than PROGRAMS_PER_SM programs per SM."""
    rows = CONFIG["BLOCK_N"]
    while rows > 1 and cdiv(n, rows) < PROGRAMS_PER_SM * sms:
        rows //= 2
    return rows


@functools.lru_cache(maxsize=None)
def _default_config(n: int, sms: int) -> dict:
    """CONFIG with rows_per_program's BLOCK_N (one dict per weight height: built once, never changed)."""
    return {**CONFIG, "BLOCK_N": rows_per_program(n, sms)}


@triton.jit
def _load_x(x_ptr, start, cols, k, SILU_MUL: tl.constexpr):
    """x[start:start + BLOCK_K] in fp32; with SILU_MUL, silu(gate) * up of x = [gate | up] (each K long),
    rounded to x's dtype first as silu_and_mul stores it."""
    mask = start + cols < k
    x = tl.load(x_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
    if SILU_MUL:
        up = tl.load(x_ptr + k + start + cols, mask=mask, other=0.0).to(tl.float32)
        x = (_activate(x, 0) * up).to(x_ptr.dtype.element_ty).to(tl.float32)
    return x


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, n, k, w_row_stride, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SILU_MUL: tl.constexpr, USE_PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < n
    w_ptrs = w_ptr + rows.to(tl.int64)[:, None] * w_row_stride + cols[None, :]
    # W streams through once: evict_first keeps it from pushing x or other layers' activations out of L2.
    # Its first tile is requested before the wait for the kernel before us (ops/pdl.py): no kernel writes W.
    w = tl.load(w_ptrs, mask=row_ok[:, None] & (cols < k)[None, :], other=0.0, eviction_policy="evict_first")
    pdl_wait(USE_PDL)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        x = _load_x(x_ptr, start, cols, k, SILU_MUL)
        acc += w.to(tl.float32) * x[None, :]
        nxt = start + BLOCK_K  # the next tile (all masked off after the last one: no memory traffic)
        w = tl.load(w_ptrs + nxt, mask=row_ok[:, None] & (nxt + cols < k)[None, :], other=0.0,
                    eviction_policy="evict_first")
    tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=row_ok)


def _gemv(x: torch.Tensor, weight: torch.Tensor, silu_mul: bool, config: dict | None) -> torch.Tensor:
    """Launch the kernel on one row x (its last dim K, or 2K = [gate | up] with silu_mul)."""
    n, k = weight.shape
    cfg = config or _default_config(n, sm_count(x.device, cpu=H100_SMS))
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    if n == 0:
        return out
    if k == 0:
        return out.zero_()
    xv = x.reshape(x.shape[-1])
    xv = xv if xv.stride(0) == 1 else xv.contiguous()
    w = weight if weight.stride(1) == 1 else weight.contiguous()
    launch(_gemv_kernel, (cdiv(n, cfg["BLOCK_N"]),), xv, w, out, n, k, w.stride(0), BLOCK_N=cfg["BLOCK_N"],
           BLOCK_K=cfg["BLOCK_K"], SILU_MUL=silu_mul, **pdl_launch(x.device), num_warps=cfg["num_warps"],
           num_stages=cfg["num_stages"])
    return out


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """x [1, K] (or [K]) times weight [N, K]^T -> [1, N] (or [N]) with the Triton kernel."""
    return _gemv(x, weight, False, config)


def silu_mul_gemv_triton(x: torch.Tensor, weight: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """silu(gate) * up of x = [gate | up] ([1, 2K] or [2K]) times weight [N, K]^T, in one launch."""
    return _gemv(x, weight, True, config)


def gemv_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [1, K] (or [K]) times weight [N, K]^T, as torch.nn.functional.linear computes it."""
    return torch.nn.functional.linear(x, weight)


def silu_mul_gemv_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """linear(silu(gate) * up, weight) for x = [gate | up], the activation rounded once to x's dtype.

    Rounded once as the silu_and_mul kernel rounds it (the engine's unfused CUDA path), not twice as
    HF's silu then mul: a flipped last bit on many inputs can move a near-zero output of the dot by more
    than the tolerance, a difference of the references, not of the kernel."""
    gate, up = x.float().chunk(2, dim=-1)
    return torch.nn.functional.linear((torch.nn.functional.silu(gate) * up).to(x.dtype), weight)


def _check_row(x: torch.Tensor, weight: torch.Tensor, gated: bool) -> None:
    """x one row of weight.shape[1] values, or of twice that ([gate | up]) when gated."""
    check_tensor("x", x, min_dim=1, max_dim=2)
    check_tensor("weight", weight, min_dim=2, max_dim=2)
    if x.dim() == 2 and x.shape[0] != 1:
        raise ValueError(f"x must hold one row ([K] or [1, K]), got shape {tuple(x.shape)}")
    width = weight.shape[1] * (2 if gated else 1)
    if x.shape[-1] != width:
        what = "2 * weight.shape[1] ([gate | up])" if gated else "weight.shape[1]"
        raise ValueError(f"x last dimension must equal {what} ({width}), got {x.shape[-1]}")
    if x.dtype != weight.dtype:
        raise ValueError(f"weight dtype must match x ({x.dtype}), got {weight.dtype}")
    check_same_device(x=x, weight=weight)


def _validate(x: torch.Tensor, weight: torch.Tensor) -> None:
    _check_row(x, weight, gated=False)


def _validate_silu_mul(x: torch.Tensor, weight: torch.Tensor) -> None:
    _check_row(x, weight, gated=True)


# Qwen3-4B's projections at one token: qkv, o, gate_up, down (N, K).
QWEN3_4B_SHAPES = ((6144, 2560), (2560, 4096), (19456, 2560), (2560, 9728))


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int = 2560) -> BenchCase:
    """One token through a weight of `rows` outputs by `cols` inputs (the bench's rows are W's rows)."""
    x = torch.randn(1, cols, dtype=dtype, device=device)
    w = torch.randn(rows, cols, dtype=dtype, device=device) / cols ** 0.5
    return BenchCase((x, w), bytes_moved=w.numel() * w.element_size())


def _bench_silu_mul(rows: int, dtype: torch.dtype, device: str, cols: int = 9728) -> BenchCase:
    """One token's gate_up output [1, 2 * cols] through silu_and_mul and a `rows` x `cols` weight."""
    x = torch.randn(1, 2 * cols, dtype=dtype, device=device)
    w = torch.randn(rows, cols, dtype=dtype, device=device) / cols ** 0.5
    return BenchCase((x, w), bytes_moved=(w.numel() + x.numel()) * w.element_size())


gemv = register("gemv", reference=gemv_reference, triton=gemv_triton, validate=_validate,
                bench_case=_bench_case)
silu_mul_gemv = register("silu_mul_gemv", reference=silu_mul_gemv_reference, triton=silu_mul_gemv_triton,
                         validate=_validate_silu_mul, bench_case=_bench_silu_mul)


def sweep(dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """GPU time (cold L2, CUDA graphs) of cuBLAS and each kernel config on the Qwen3-4B shapes."""
    import itertools

    from flagstack.bench.common import cold_graph_time_us

    rows = []
    for n, k in QWEN3_4B_SHAPES:
        x = torch.randn(1, k, dtype=dtype, device="cuda")
        w = torch.randn(n, k, dtype=dtype, device="cuda") / k ** 0.5
        mb = w.numel() * w.element_size() / 1e6
        timings = {"cublas": cold_graph_time_us(lambda: torch.nn.functional.linear(x, w))}
        for bn, bk, warps, stages in itertools.product((4, 8, 16), (512, 1024), (4, 8), (2, 4)):
            cfg = {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}
            try:
                torch.testing.assert_close(gemv_triton(x, w, cfg), gemv_reference(x, w), rtol=0.016, atol=1e-2)
                timings[f"{bn}x{bk} w{warps} s{stages}"] = cold_graph_time_us(lambda: gemv_triton(x, w, cfg))
            except Exception as err:  # noqa: BLE001 -- an out-of-resources config is skipped, not fatal
                print(f"  {n}x{k} {cfg}: {type(err).__name__}")
        best = min((t, name) for name, t in timings.items() if name != "cublas")
        print(f"{n}x{k} ({mb:.1f} MB): cublas {timings['cublas']:.1f} us ({mb / timings['cublas']:.2f} TB/s), "
              f"best {best[1]} {best[0]:.1f} us ({mb / best[0]:.2f} TB/s)", flush=True)
        rows.append({"n": n, "k": k, "mb": mb, **timings})
    return rows

