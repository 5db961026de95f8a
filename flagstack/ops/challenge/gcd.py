"""gcd: the greatest common divisor, elementwise with broadcasting (torch.gcd, gcd_, gcd(out=)).

Memory traffic: read 2n, write n integers (4096^2 int32: 201 MB, ~67 us at 3.0 TB/s), but the
Euclid loop's integer divisions make it compute-bound. ATen's algorithm, step for step (so that
gcd(0, INT_MIN) = INT_MIN as in ATen): a, b = |a|, |b|; while a != 0: a, b = b % a, a; return b.
A block loops until all its lanes are done; finished lanes just keep a = 0. On a GPU a block is
128 pairs on one warp: the loop test is then a warp-local reduction (no barrier) and the slowest of
128 pairs sets the trip count, not the slowest of 2048 (0.76x torch with 2048 pairs on 4 warps). The
CPU interpreter pays per program, so there the block stays 2048 wide.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import (BLOCK, INT_DTYPES, check_kernel_dtype, flat_offsets,
                                               launch_elementwise)
from flagstack.ops.registry import BenchCase, register, register_aten


@triton.jit
def _euclid_steps(a, b, STEPS: tl.constexpr):
    """STEPS Euclid steps on the lanes still running (a != 0); finished lanes keep a = 0."""
    for _ in tl.static_range(STEPS):
        running = a != 0
        remainder = b % tl.where(running, a, 1)
        b = tl.where(running, a, b)
        a = tl.where(running, remainder, 0)
    return a, b


@triton.jit
def _fits_int32(x):
    return (x >= -2147483648) & (x <= 2147483647)


@triton.jit
def _gcd_kernel(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    a = tl.load(a_ptr + offsets, mask=mask, other=0).to(out_ptr.dtype.element_ty)
    b = tl.load(b_ptr + offsets, mask=mask, other=0).to(out_ptr.dtype.element_ty)
    if a.dtype.is_int_signed():
        a = tl.where(a < 0, -a, a)
        b = tl.where(b < 0, -b, b)
    if a.dtype == tl.int64:
        # A 64-bit remainder is a long emulated sequence, several times a 32-bit one, and random
        # 64-bit pairs fall into int32 range after about half their steps: step in int64 only while
        # a running lane needs it, then finish in int32 (same truncating remainder, so the same
        # results, INT_MIN quirks included). Lanes already done keep their 64-bit result.
        while tl.max(((a != 0) & ~(_fits_int32(a) & _fits_int32(b))).to(tl.int32), axis=0) > 0:
            a, b = _euclid_steps(a, b, 1)
        done = a == 0
        a32, b32 = tl.where(done, 0, a).to(tl.int32), tl.where(done, 0, b).to(tl.int32)
        while tl.max((a32 != 0).to(tl.int32), axis=0) > 0:
            a32, b32 = _euclid_steps(a32, b32, 2)
        b = tl.where(done, b, b32.to(tl.int64))
    else:
        # Two steps per loop test: the test is a reduction over the block, a step on a finished
        # lane changes nothing.
        while tl.max((a != 0).to(tl.int32), axis=0) > 0:
            a, b = _euclid_steps(a, b, 2)
    tl.store(out_ptr + offsets, b, mask=mask)


def _launch_config(t: torch.Tensor) -> dict:
    return dict(block=128, num_warps=1) if t.is_cuda else dict(block=BLOCK, num_warps=4)


def gcd_triton(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Greatest common divisor (non-negative, gcd(0, 0) = 0) of integer tensors, with broadcasting."""
    result = torch.result_type(a, b)
    check_kernel_dtype("gcd", result, INT_DTYPES, a.device)
    return launch_elementwise(_gcd_kernel, [a, b], result, out, **_launch_config(a))


def gcd_inplace(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """In-place gcd_ (aten::gcd_): `a` must already have the broadcast shape."""
    result = torch.result_type(a, b)
    check_kernel_dtype("gcd", result, INT_DTYPES, a.device)
    return launch_elementwise(_gcd_kernel, [a, b], result, a, inplace=True, **_launch_config(a))


def gcd_reference(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Greatest common divisor elementwise (torch.gcd)."""
    return torch.gcd(a, b, out=out)



def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int = 4096) -> BenchCase:
    """Full-range random integers; a float dtype (as `flagstack ops test` passes) means int32."""
    dtype = dtype if not dtype.is_floating_point else torch.int32
    info = torch.iinfo(dtype)
    a, b = (torch.randint(info.min, info.max, (rows, cols), device=device, dtype=dtype) for _ in range(2))
    return BenchCase((a, b), bytes_moved=3 * a.numel() * a.element_size())

register_aten("aten::gcd", gcd_triton)
register_aten("aten::gcd.out", gcd_triton)
register_aten("aten::gcd_", gcd_inplace)
gcd = register("gcd", reference=gcd_reference, triton=gcd_triton, flaggems="ops.gcd",
                bench_case=_bench_case)
