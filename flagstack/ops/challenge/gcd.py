"""gcd: the greatest common divisor, elementwise with broadcasting (torch.gcd, gcd_, gcd(out=)).

Memory traffic: read 2n, write n integers (4096^2 int32: 201 MB, ~67 us at 3.0 TB/s); the step loop
makes it compute-bound. ATen runs Euclid (a, b = |a|, |b|; while a != 0: a, b = b % a, a; return b),
whose integer remainder is a long sequence on a GPU. We run binary GCD (Stein) instead: the same
results wherever |x| fits the dtype, with a shift, a float conversion, compares and a subtraction
per step. Lanes holding MIN, where |MIN| overflows and ATen returns odd values (gcd(INT_MIN, 6) = -2),
take ATen's own Euclid loop, which costs one loop test per block that holds none.

Instructions per pair and step, sm90 SASS of the loop bodies (128 pairs on one warp, 4 per thread,
loop test shared): Euclid int32 ~27, three of them quarter-rate (I2F, MUFU.RCP, F2I of the reciprocal
division); Stein int32 ~9 (negate, AND, I2FP, LEA.HI, SHF, 2 IMNMX, IADD; test); Euclid int64
~100 (26 plus a call to the 78-instruction 64-bit remainder routine); Stein int64 ~26 (one I2F.F64).
Trip counts are alike: the slowest of 128 random full-range pairs needs ~27 steps either way
(Stein's count varies less); int64 pairs take ~28 steps in 64-bit, then ~26 in 32-bit. A block loops
until all its lanes are done; finished lanes step on harmlessly. On a GPU a block is 128 pairs on one
warp: the loop test is then a warp-local reduction (one REDUX, no barrier) and the slowest of 128
pairs sets the trip count, not the slowest of 2048. The CPU interpreter pays per program, so there
blocks stay 2048 wide.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import (BLOCK, INT_DTYPES, check_kernel_dtype, flat_offsets,
                                               launch_elementwise)
from flagstack.ops.registry import BenchCase, register, register_aten


@triton.jit
def _ctz(x):
    """Trailing zero bits of x > 0; for x = 0 a valid shift amount (1)."""
    # x & -x keeps the lowest set bit, a power of two: exact as a float, whose exponent field is the
    # bit's index (one conversion, no loop; Triton has no ctz that also runs in the interpreter).
    # The mask turns ctz(0) (exponent field 0) into 1, not an out-of-range shift; in int32 it is
    # free on sm90, where ptxas folds it into a wrapping shift (SHF.R.W) and the bias into LEA.HI.
    if x.dtype == tl.int64:
        return (((x & -x).to(tl.float64).to(tl.int64, bitcast=True) >> 52) - 1023) & 63
    else:
        return (((x & -x).to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127) & 31


@triton.jit
def _stein_steps(a, b, STEPS: tl.constexpr):
    """STEPS binary-GCD steps on (a odd, b): strip b's twos, then (a, b) = (min, |difference|).

    A lane ends at (g, 0), which one more step turns into (0, g), a fixed point (g is odd)."""
    for _ in tl.static_range(STEPS):
        b = b >> _ctz(b)
        low, high = tl.minimum(a, b), tl.maximum(a, b)
        a, b = low, high - low
    return a, b


@triton.jit
def _stein_loop(a, b, STEPS: tl.constexpr):
    """Steps until every lane of the block has reached (g, 0) or (0, g); returns g."""
    while tl.max(tl.minimum(a, b), axis=0) > 0:
        a, b = _stein_steps(a, b, STEPS)
    return tl.maximum(a, b)


@triton.jit
def _binary_gcd(a, b):
    """gcd of non-negative a, b (Stein): only shifts, compares and subtractions, no division."""
    shift = _ctz(a | b)  # the common factor 2^shift, put back at the end (gcd(0, 0): 0 << 1 = 0)
    a, b = a >> shift, b >> shift
    # a odd (or 0: then b is the gcd at once), so each difference below is even and loses a bit
    # (an even a could take b down by only a per step).
    a = a >> _ctz(a)
    if a.dtype == tl.int64:
        # A 64-bit step is ~2.5x the instructions of a 32-bit one, and random 63-bit pairs fit in 31
        # bits after about half their steps: step in int64 only while a running lane needs it, then
        # finish in int32. A lane still too wide for int32 has finished and keeps its 64-bit result.
        while tl.max(((tl.minimum(a, b) > 0) & ((a | b) > 2147483647)).to(tl.int32), axis=0) > 0:
            a, b = _stein_steps(a, b, 2)
        narrow = (a | b) <= 2147483647
        g32 = _stein_loop(tl.where(narrow, a, 0).to(tl.int32), tl.where(narrow, b, 0).to(tl.int32), 2)
        g = tl.where(narrow, g32.to(tl.int64), tl.maximum(a, b))
    else:
        g = _stein_loop(a, b, 2)
    return g << shift


@triton.jit
def _aten_euclid(a, b):
    """ATen's loop, step for step: while a != 0: a, b = b % a, a; return b (its signs included)."""
    while tl.max((a != 0).to(tl.int32), axis=0) > 0:
        running = a != 0
        remainder = b % tl.where(running, a, 1)
        b = tl.where(running, a, b)
        a = tl.where(running, remainder, 0)
    return b


@triton.jit
def _gcd_kernel(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    a = tl.load(a_ptr + offsets, mask=mask, other=0).to(out_ptr.dtype.element_ty)
    b = tl.load(b_ptr + offsets, mask=mask, other=0).to(out_ptr.dtype.element_ty)
    # Narrow dtypes step in 32-bit registers anyway. |MIN| is MIN again in the result dtype, as in ATen;
    # for int8/int16 that wrap is spelled out in 32 bits: a 16-bit negation compiled for the H100 did
    # not wrap (gcd(-32768, -32767) came out 1, ATen's -1), while the CPU interpreter's did.
    signed, narrow = a.dtype.is_int_signed(), a.dtype == tl.int8 or a.dtype == tl.int16
    top = 128 if a.dtype == tl.int8 else 32768  # |MIN| of a narrow signed dtype
    wide = tl.int64 if a.dtype == tl.int64 else tl.int32
    a, b = a.to(wide), b.to(wide)
    if signed:
        a = tl.where(a < 0, -a, a)
        b = tl.where(b < 0, -b, b)
        if narrow:
            a = tl.where(a == top, -top, a)
            b = tl.where(b == top, -top, b)
    # A lane holding MIN (still negative here) follows ATen's Euclid, whose result there can be
    # negative (gcd(INT_MIN, 6) = -2, gcd(0, INT_MIN) = INT_MIN): its sign depends on the parity of
    # the Euclid step count, which binary GCD does not have. In a block without MIN that loop
    # stops at its first test; binary GCD sees 0 in the MIN lanes.
    quirk = (a | b) < 0
    aten = _aten_euclid(tl.where(quirk, a, 0), tl.where(quirk, b, 0))
    stein = _binary_gcd(tl.where(quirk, 0, a), tl.where(quirk, 0, b))
    tl.store(out_ptr + offsets, tl.where(quirk, aten, stein), mask=mask)


def _launch_config(t: torch.Tensor) -> dict:
    return dict(block=128, num_warps=1) if t.is_cuda else dict(block=BLOCK, num_warps=4)


def gcd_triton(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Greatest common divisor of integer tensors with broadcasting (gcd(0, 0) = 0; ATen's signs at MIN)."""
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
