"""RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight, one row per Triton program.

Memory traffic per call: read x (M*N elements), read weight (N, cached), write y (M*N):
2*M*N*elem_size bytes. Memory-bound: at M=32768, N=2560, bf16 that is 335 MB -> ~112 us at 3.0 TB/s.
Everything is computed in fp32 and rounded once at the end (as torch.nn.functional.rms_norm does).
HF transformers rounds twice (the normalized x, then the product); in fp32 the two agree exactly, and
in half precision rounding once is the more accurate of the two.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.checks import check_last_dim, check_same_device, check_tensor, rows_view
from flagstack.ops.registry import BenchCase, register


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, x_row_stride, y_row_stride, n_cols, eps,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * y_row_stride + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim with the Triton kernel."""
    rows = rows_view(x)
    out = torch.empty_like(rows)
    n = rows.shape[1]
    if rows.numel() > 0:
        block = triton.next_power_of_2(n)
        _rms_norm_kernel[(rows.shape[0],)](rows, weight, out, rows.stride(0), out.stride(0), n, eps,
                                           BLOCK=block, num_warps=min(max(block // 256, 1), 16))
    return out.view(x.shape)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim, computed in fp32 and rounded once to x's dtype."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _validate(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> None:
    check_tensor("x", x)
    check_tensor("weight", weight, min_dim=1, max_dim=1)
    check_last_dim("x", x, weight.shape[0], "weight size")
    check_same_device(x=x, weight=weight)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def _bench_case(rows: int, dtype: torch.dtype, device: str, hidden: int = 2560) -> BenchCase:
    x = torch.randn(rows, hidden, dtype=dtype, device=device)
    w = torch.randn(hidden, dtype=dtype, device=device)
    return BenchCase((x, w, 1e-6), bytes_moved=2 * x.numel() * x.element_size())


rms_norm = register("rms_norm", reference=rms_norm_reference, triton=rms_norm_triton,
                    flaggems="ops.rms_norm", validate=_validate, bench_case=_bench_case)
