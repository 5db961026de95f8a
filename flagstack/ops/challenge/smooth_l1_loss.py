"""smooth_l1_loss (Huber-like loss with threshold beta) and its backward, with reductions none / mean /
sum, broadcasting, out= and grad_input= (F.smooth_l1_loss, aten::smooth_l1_loss[_backward][.out]).

loss(d) = 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta, with d = input - target (beta = 0
is the L1 loss). Math in fp32 (fp64 for fp64), except where ATen's CUDA kernels differ from its CPU ones
and the tensors are on CUDA: an out= of another dtype is computed as ATen's CUDA kernel does (inputs and
d in out's dtype), and the backward at d = 0, beta = 0 is 0 / 0 = nan there (-grad on CPU).

The reduced forms never write the elementwise loss: each of a few programs per SM sums its grid-strided
blocks in fp32 and a second one-program launch adds the partial sums, so 4096^2 fp32 reads 134 MB and
writes 4 bytes (~45 us at 3.0 TB/s). The backward of a reduced loss reads its 0-dim grad once per program
instead of broadcasting it to n elements.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import (FLOAT_DTYPES, check_kernel_dtype, check_out_dtype, flat_offsets,
                                               launch_elementwise, resize_out, same_dense_layout,
                                               to_compute_dtype)
from flagstack.ops.host import cdiv, next_power_of_2, sm_count
from flagstack.ops.launch_cache import CachedLauncher, aligned
from flagstack.ops.registry import BenchCase, register, register_aten

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # ATen's Reduction enum
BLOCK = 2048  # elements per program and loop step: 8 per thread at 8 warps


@triton.jit
def _loss(d, beta):
    ad = tl.abs(d)
    return tl.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)  # nan fails `<`: ad - 0.5 beta = nan


@triton.jit
def _diff(x, y):
    return to_compute_dtype(x) - to_compute_dtype(y)


@triton.jit
def _loss_kernel(x_ptr, y_ptr, out_ptr, n, beta, DIFF_IN_OUT_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    x, y = tl.load(x_ptr + offsets, mask=mask), tl.load(y_ptr + offsets, mask=mask)
    if DIFF_IN_OUT_DTYPE:  # ATen's CUDA kernel: x, y and x - y rounded to out's dtype, the rest in fp32
        out_dtype = out_ptr.dtype.element_ty
        d = to_compute_dtype(_diff(x.to(out_dtype), y.to(out_dtype)).to(out_dtype))
    else:
        d = _diff(x, y)
    tl.store(out_ptr + offsets, _loss(d, beta).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _partial_sum_kernel(x_ptr, y_ptr, partial_ptr, n, beta, BLOCK: tl.constexpr):
    # Program p sums blocks p, p + P, p + 2P... (P programs): coalesced reads, one store per program.
    pid = tl.program_id(0).to(tl.int64)
    step = tl.num_programs(0).to(tl.int64) * BLOCK
    acc = tl.zeros([BLOCK], partial_ptr.dtype.element_ty)
    for start in range(pid * BLOCK, n, step):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < n
        loss = _loss(_diff(tl.load(x_ptr + offsets, mask=mask), tl.load(y_ptr + offsets, mask=mask)), beta)
        acc += tl.where(mask, loss, 0.0)
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _finish_kernel(partial_ptr, out_ptr, n_partials, scale, BLOCK_P: tl.constexpr):
    offsets = tl.arange(0, BLOCK_P)
    total = tl.sum(tl.load(partial_ptr + offsets, mask=offsets < n_partials, other=0.0), axis=0)
    tl.store(out_ptr, (total * scale).to(out_ptr.dtype.element_ty))


@triton.jit
def _grad(grad, x, y, beta, norm, CUDA_RULE: tl.constexpr):
    # ATen's rule: -1 below -beta, 1 above beta, d / beta between; nan stays nan. Its CPU kernel counts
    # d = +-beta as outside (the same values, but -1 for d = 0 at beta = 0), its CUDA kernel as inside
    # (0 / 0 = nan there).
    d = _diff(x, y)
    if CUDA_RULE:
        deriv = tl.where(d < -beta, -1.0, tl.where(d > beta, 1.0, d / beta))
    else:
        deriv = tl.where(d <= -beta, -1.0, tl.where(d >= beta, 1.0, d / beta))
    return deriv * norm * to_compute_dtype(grad)


@triton.jit
def _backward_kernel(grad_ptr, x_ptr, y_ptr, out_ptr, n, beta, norm, CUDA_RULE: tl.constexpr, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    grad = _grad(tl.load(grad_ptr + offsets, mask=mask), tl.load(x_ptr + offsets, mask=mask),
                 tl.load(y_ptr + offsets, mask=mask), beta, norm, CUDA_RULE)
    tl.store(out_ptr + offsets, grad.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_scalar_grad_kernel(x_ptr, y_ptr, out_ptr, n, grad_ptr, beta, norm, CUDA_RULE: tl.constexpr,
                                 BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    grad = _grad(tl.load(grad_ptr), tl.load(x_ptr + offsets, mask=mask), tl.load(y_ptr + offsets, mask=mask),
                 beta, norm, CUDA_RULE)
    tl.store(out_ptr + offsets, grad.to(out_ptr.dtype.element_ty), mask=mask)


# The reduction's two launches are most of its host time, which decides the small shapes' wall time on a slow
# host (1024^2 fp32: 30.8 us wall for 4.2 us of GPU time on one H100 machine): launched by key (launch_cache.py)
_PARTIAL_SUM = CachedLauncher(_partial_sum_kernel)
_FINISH = CachedLauncher(_finish_kernel)


def follows_aten_cuda(t: torch.Tensor) -> bool:
    """Whether results follow ATen's CUDA kernels where they differ from its CPU ones (tests patch it)."""
    return t.is_cuda


def _reduction(reduction: int | str) -> int:
    """ATen's enum value; the strings of F.smooth_l1_loss are accepted too."""
    value = REDUCTIONS.get(reduction, -1) if isinstance(reduction, str) else int(reduction)
    if value not in REDUCTIONS.values():  # ATen raises this from an internal assert
        raise RuntimeError(f"reduction must be 'none' (0), 'mean' (1) or 'sum' (2), got {reduction!r}")
    return value


def _check_beta(beta: float) -> float:
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    return float(beta)


def _reduce(x: torch.Tensor, y: torch.Tensor, beta: float, mean: bool, out: torch.Tensor) -> torch.Tensor:
    """Sum (or mean) of the elementwise loss of broadcast x, y into the 0-dim `out`."""
    # Host time decides the small shapes (the GPU part of 1024^2 takes a few us): no broadcast_shapes
    # (~40 us) or triton.cdiv (~10 us) on the common path of two contiguous tensors of one shape.
    if x.shape != y.shape:
        shape = torch.broadcast_shapes(x.shape, y.shape)
        x, y = x.expand(shape), y.expand(shape)
    if not (x.is_contiguous() and y.is_contiguous()) and not same_dense_layout([x, y]):
        x, y = x.contiguous(), y.contiguous()
    n = x.numel()
    if n == 0:  # torch: the mean of nothing is nan, the sum 0
        return out.fill_(float("nan") if mean else 0.0)
    acc_dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    # Enough blocks in flight to fill the GPU (4 programs of 8 warps per SM), at most 1024 partials.
    programs = min(cdiv(n, BLOCK), 4 * sm_count(x.device, cpu=2), 1024)
    partial = torch.empty(programs, dtype=acc_dtype, device=x.device)  # fresh, so aligned
    _PARTIAL_SUM((x.dtype, y.dtype, aligned(x), aligned(y), n, acc_dtype), (programs,), (x, y, partial, n, beta),
                 {"BLOCK": BLOCK}, num_warps=8)
    _FINISH((acc_dtype, out.dtype, aligned(out), programs), (1,), (partial, out, programs, 1.0 / n if mean else 1.0),
            {"BLOCK_P": next_power_of_2(programs)}, num_warps=4)
    return out


def smooth_l1_loss_triton(x: torch.Tensor, target: torch.Tensor, reduction: int | str = 1, beta: float = 1.0, *,
                          out: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth L1 loss of x against target (broadcast); reduction 0/'none', 1/'mean' or 2/'sum'."""
    reduction, beta = _reduction(reduction), _check_beta(beta)
    result = torch.result_type(x, target)
    check_kernel_dtype("smooth_l1", result, FLOAT_DTYPES, x.device)
    if reduction == REDUCTIONS["none"]:
        in_out_dtype = (out is not None and follows_aten_cuda(x) and out.dtype.is_floating_point
                        and out.dtype != result)
        if in_out_dtype:
            check_out_dtype(result, out)
        return launch_elementwise(_loss_kernel, [x, target], out.dtype if in_out_dtype else result, out,
                                  scalars=(beta, in_out_dtype))
    if out is None:
        out = torch.empty((), dtype=result, device=x.device)
    else:
        check_out_dtype(result, out)
        resize_out(out, ())
    return _reduce(x, target, beta, reduction == REDUCTIONS["mean"], out)


def smooth_l1_loss_backward_triton(grad_output: torch.Tensor, x: torch.Tensor, target: torch.Tensor,
                                   reduction: int | str, beta: float, *,
                                   grad_input: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of smooth_l1_loss wrt x, given the gradient of its (reduced or not) result.

    As ATen's, it checks neither beta nor reduction (any value but mean sums); floating dtypes only,
    as ATen's CUDA kernel (its CPU kernel also takes integers)."""
    pair = torch.result_type(x, target)
    rank = max(x.dim(), target.dim())
    result = torch.result_type(grad_output, torch.empty([1] * rank, dtype=pair, device="meta"))
    check_kernel_dtype("smooth_l1_backward", result, FLOAT_DTYPES, x.device)
    mean = REDUCTIONS.get(reduction) == 1 if isinstance(reduction, str) else int(reduction) == 1
    norm = 1.0 / x.numel() if mean and x.numel() else 1.0
    beta, cuda_rule = float(beta), follows_aten_cuda(x)
    if grad_output.dim() == 0:  # a reduced loss: every element gets the same upstream gradient
        return launch_elementwise(_backward_scalar_grad_kernel, [x, target], result, grad_input,
                                  scalars=(grad_output.to(x.device), beta, norm, cuda_rule))
    return launch_elementwise(_backward_kernel, [grad_output, x, target], result, grad_input,
                              scalars=(beta, norm, cuda_rule))


def smooth_l1_loss_reference(x: torch.Tensor, target: torch.Tensor, reduction: int | str = 1, beta: float = 1.0,
                             *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth L1 loss (torch's aten::smooth_l1_loss)."""
    reduction = REDUCTIONS[reduction] if isinstance(reduction, str) else reduction
    if out is None:
        return torch.ops.aten.smooth_l1_loss(x, target, reduction, beta)
    return torch.ops.aten.smooth_l1_loss.out(x, target, reduction, beta, out=out)


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int = 4096) -> BenchCase:
    x, y = (torch.randn(rows, cols, device=device, dtype=dtype) for _ in range(2))
    return BenchCase((x, y, 1, 1.0), bytes_moved=2 * x.numel() * x.element_size())


register_aten("aten::smooth_l1_loss", smooth_l1_loss_triton)
register_aten("aten::smooth_l1_loss.out", smooth_l1_loss_triton)
register_aten("aten::smooth_l1_loss_backward", smooth_l1_loss_backward_triton)
register_aten("aten::smooth_l1_loss_backward.grad_input", smooth_l1_loss_backward_triton)
smooth_l1_loss = register("smooth_l1_loss", reference=smooth_l1_loss_reference, triton=smooth_l1_loss_triton,
                          flaggems="ops.smooth_l1_loss", bench_case=_bench_case)
