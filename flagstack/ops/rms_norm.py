"""RMSNorm and the fused residual-add RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight.

One kernel serves both ops. Each program normalizes BLOCK_M whole rows held in registers, so every
element is read once and written once:
  rms_norm:     read x, write y                          -> 2*M*N*elem_size bytes
  add_rms_norm: read x and residual, write residual and y -> 4*M*N*elem_size bytes
At M=32768, N=2560, bf16 that is 335 MB / 671 MB -> ~112 us / ~224 us at 3.0 TB/s.
Wide rows (N >= 2048) get one row per program and up to 8 warps (4 with a residual); narrow rows
(per-head norms, N=128) pack several rows per program so each program still moves ~2K elements.
The weight is loaded first: with a residual the kernel stores the sum before it needs the weight,
and a load after a store through a pointer that may alias it is not moved ahead of it, so a late
weight load added its latency to every program's.

Rounding: statistics and the product are computed in fp32 and rounded once at the end (as
torch.nn.functional.rms_norm does). HF transformers rounds twice (the normalized x, then the product);
in fp32 the two agree exactly, and in half precision rounding once is the more accurate of the two.
The residual sum is rounded to the input dtype before it is normalized, as HF stores it.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from flagstack.ops.checks import check_last_dim, check_same_device, check_tensor, rows_view
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.launch_cache import launch
from flagstack.ops.pdl import pdl_launch, pdl_wait
from flagstack.ops.registry import BenchCase, register, register_aten

MAX_COLS = 65536  # a whole row lives in registers; wider rows would spill


@triton.jit(do_not_specialize=["n_rows"])  # token count: one compile for all
def _rms_norm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, n_rows, n_cols, x_row_stride, r_row_stride,
                     y_row_stride, eps, HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr = False):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    if HAS_WEIGHT:  # before the residual's store (see the module docstring)
        w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]
    pdl_wait(USE_PDL)  # x and the residual come from the kernels before (ops/pdl.py); the weight does not
    x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r_offs = rows[:, None] * r_row_stride + cols[None, :]
        r = tl.load(r_ptr + r_offs, mask=mask, other=0.0).to(tl.float32)
        summed = (x + r).to(r_ptr.dtype.element_ty)  # the stored residual is what gets normalized
        tl.store(r_ptr + r_offs, summed, mask=mask)
        x = summed.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    y = x * rstd[:, None]
    if HAS_WEIGHT:
        y = y * w
    tl.store(y_ptr + rows[:, None] * y_row_stride + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
            out: torch.Tensor, eps: float) -> None:
    """Run the kernel on 2-D row views (unit stride on the last dim)."""
    n_rows, n_cols = x.shape
    if x.numel() == 0:
        return
    block_n = next_power_of_2(n_cols)
    block_m = max(1, min(16, 2048 // block_n))
    # at most 8 warps: 16 for a 2560-wide row (4096 lanes) reached 83-88% of copy speed on an H100,
    # FlagGems ~100%; fewer warps per row halve the cross-warp part of the sum. With a residual, 4 for
    # rows up to 4096 wide: H100, 2560-wide bf16 rows: 4096 rows 33.8 -> 32.8 us (FlagGems 33.2),
    # 256 rows 22.3 -> 20.3 us (rms_norm alone was not re-timed with 4)
    max_warps = 4 if residual is not None and block_n <= 4096 else 8
    num_warps = min(max(block_m * block_n // 256, 1), max_warps)
    r = residual if residual is not None else x
    weight = weight.contiguous() if weight is not None else None
    launch(_rms_norm_kernel, (cdiv(n_rows, block_m),),
           x, r, weight if weight is not None else x, out, n_rows, n_cols, x.stride(0), r.stride(0),
           out.stride(0), eps, HAS_RESIDUAL=residual is not None, HAS_WEIGHT=weight is not None,
           BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, **pdl_launch(x.device))


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim with the Triton kernel."""
    rows = rows_view(x)
    out = torch.empty_like(rows)
    _launch(rows, None, weight, out, eps)
    return out if rows is x else out.view(x.shape)


def add_rms_norm_triton(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                        eps: float = 1e-6, *, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """residual += x (in place, rounded to its dtype); returns (rms_norm(residual), residual).

    out: a contiguous tensor shaped like x (not the residual) to write the result into; `out=x`
    overwrites x (as FlagGems' and vLLM's fused_add_rms_norm do), which saves the output's
    allocation and its L2 lines.
    """
    x_rows = rows_view(x)
    if out is not None:
        _check_out(out, x, residual)
    # The kernel writes the residual through its row stride; a layout that has no 2-D row view
    # (e.g. a transposed tensor) is updated through a contiguous copy written back at the end.
    direct = residual.stride(-1) == 1 and (residual.dim() == 2 or residual.is_contiguous())
    flat = x.dim() == 2  # the common case: no reshapes (each costs host time, which counts at one row)
    if direct:
        r_rows = residual if residual.dim() == 2 else residual.view(-1, residual.shape[-1])
    else:
        r_rows = residual.contiguous().view(-1, x.shape[-1])
    if out is None:
        y = torch.empty_like(x_rows)
    else:
        y = out if flat else out.view(x_rows.shape)
    _launch(x_rows, r_rows, weight, y, eps)
    if not direct:
        residual.copy_(r_rows.view(residual.shape))
    return (y if flat else y.view(x.shape)), residual


def _check_out(out: torch.Tensor, x: torch.Tensor, residual: torch.Tensor) -> None:
    if out.data_ptr() == residual.data_ptr() and out.numel() > 0:
        raise ValueError("out must not be the residual (both are written)")
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device} (contiguous: {out.is_contiguous()})")


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim, computed in fp32 and rounded once to x's dtype."""
    xf = x.float()
    # the in-place steps write only into tensors made here (fewer passes and allocations on CPU)
    return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))).mul_(weight.float()).to(x.dtype)


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float = 1e-6, *, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused residual add + RMSNorm: residual += x in place; returns (rms_norm(residual), residual),
    the first written into `out` when given (out=x overwrites x)."""
    residual.add_(x)  # torch adds half-precision tensors in fp32 and rounds once, as the kernel does
    y = rms_norm_reference(residual, weight, eps)
    return (y, residual) if out is None else (out.copy_(y), residual)


def _validate(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> None:
    check_tensor("x", x)
    check_tensor("weight", weight, min_dim=1, max_dim=1)
    check_last_dim("x", x, weight.shape[0], "weight size")
    check_same_device(x=x, weight=weight)
    if x.shape[-1] > MAX_COLS:
        raise ValueError(f"x last dimension must be <= {MAX_COLS}, got {x.shape[-1]}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def _validate_add(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *,
                  out: torch.Tensor | None = None) -> None:
    _validate(x, weight, eps)
    if out is not None:
        _check_out(out, x, residual)
    check_tensor("residual", residual)
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"residual must match x in shape and dtype ({tuple(x.shape)}, {x.dtype}), "
                         f"got {tuple(residual.shape)}, {residual.dtype}")
    check_same_device(x=x, residual=residual)


def _bench_case(rows: int, dtype: torch.dtype, device: str, hidden: int = 2560) -> BenchCase:
    x = torch.randn(rows, hidden, dtype=dtype, device=device)
    w = torch.randn(hidden, dtype=dtype, device=device)
    return BenchCase((x, w, 1e-6), bytes_moved=2 * x.numel() * x.element_size())


def _bench_case_add(rows: int, dtype: torch.dtype, device: str, hidden: int = 2560) -> BenchCase:
    x = torch.randn(rows, hidden, dtype=dtype, device=device)
    # Repeated timed calls keep adding x into the residual; starting at 0 keeps it finite.
    residual = torch.zeros_like(x)
    w = torch.randn(hidden, dtype=dtype, device=device)
    # out=x: the in-place form, as FlagGems' fused_add_rms_norm (the anchor) and vLLM's engines call it;
    # a fresh output tensor makes the footprint 3 tensors instead of 2 (at 4096 rows 63 MB vs 42 MB, the
    # difference between missing and fitting the H100's 50 MB L2 in a graph-captured step).
    return BenchCase((x, residual, w, 1e-6), kwargs={"out": x}, bytes_moved=4 * x.numel() * x.element_size())


def aten_rms_norm(input: torch.Tensor, normalized_shape: list[int], weight: torch.Tensor | None = None,
                  eps: float | None = None) -> torch.Tensor:
    """aten::rms_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight=None, float? eps=None)."""
    n = len(normalized_shape)
    if n == 0 or tuple(input.shape[input.dim() - n:]) != tuple(normalized_shape):
        raise ValueError(f"normalized_shape {list(normalized_shape)} must match the trailing dims of "
                         f"input {tuple(input.shape)}")
    if eps is None:  # ATen's default: the epsilon of the type it computes in (fp32 for half types), not the input's
        eps = torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps
    cols = math.prod(normalized_shape)
    kernel_ok = (input.dtype in (torch.float16, torch.bfloat16, torch.float32) and cols <= MAX_COLS
                 and (weight is None or weight.dtype == input.dtype))
    if not kernel_ok:  # ATen's composite formula, written without calling aten::rms_norm again
        dims = tuple(range(-n, 0))
        xf = input.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + eps)).type_as(input)
        return normed if weight is None else normed * weight
    rows = rows_view(input.reshape(*input.shape[:input.dim() - n], cols))
    out = torch.empty_like(rows)
    _launch(rows, None, None if weight is None else weight.reshape(cols), out, eps)
    return out.view(input.shape)


# No flaggems= path: FlagGems' rms_norm takes normalized_shape, not our arguments (bench/ops.py adapts it).
rms_norm = register("rms_norm", reference=rms_norm_reference, triton=rms_norm_triton,
                    validate=_validate, bench_case=_bench_case)
add_rms_norm = register("add_rms_norm", reference=add_rms_norm_reference, triton=add_rms_norm_triton,
                        validate=_validate_add, bench_case=_bench_case_add)
register_aten("aten::rms_norm", aten_rms_norm)
