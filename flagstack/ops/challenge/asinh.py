"""asinh: the inverse hyperbolic sine of every element (torch.asinh, asinh_, asinh(out=)).

Memory traffic: read n inputs, write n outputs; 4096^2 fp32 moves 134 MB, ~45 us at 3.0 TB/s.
asinh(x) = sign(x) * ln(|x| + sqrt(x^2 + 1)); above |x| = 2^12 the 1 is negligible and x^2 could
overflow, so there it is sign(x) * (ln|x| + ln 2) (relative error < 2^-26). Below |x| = 2^-8 the log
would lose the tiny result's relative precision, so there it is x (1 - x^2/6 + 3x^4/40) (the next
term is < 1e-16 relative), which also keeps asinh(-0) = -0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import (flat_offsets, float_result_dtype, launch_elementwise,
                                               to_compute_dtype)
from flagstack.ops.registry import BenchCase, register, register_aten

LN2 = tl.constexpr(0.6931471805599453)
LARGE = tl.constexpr(4096.0)
SMALL = tl.constexpr(0.00390625)


@triton.jit
def _hardware_log(v):
    """ln(v) from the GPU's base-2 log (MUFU.LG2, relative error ~2^-22): plenty for fp16/bf16 results,
    and a few instructions where the full-precision log takes ~25. Not available in the interpreter."""
    return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [v], dtype=tl.float32, is_pure=True,
                                     pack=1) * LN2


@triton.jit
def _asinh_kernel(x_ptr, out_ptr, n, HARDWARE_LOG: tl.constexpr, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    x = to_compute_dtype(tl.load(x_ptr + offsets, mask=mask))
    a = tl.abs(x)
    big = a > LARGE
    safe = tl.where(big, 1.0, a)  # keeps x^2 finite in the branch not taken
    # one log for both branches: the op is compute-bound on an H100 with two (57% of copy speed)
    argument = tl.where(big, a, safe + tl.sqrt(safe * safe + 1.0))
    if HARDWARE_LOG:  # bf16 4096^2 was still issue-bound (0.93x torch) with the full-precision log
        magnitude = _hardware_log(argument)
    else:
        magnitude = tl.log(argument)
    magnitude = tl.where(big, magnitude + LN2, magnitude)
    x2 = x * x
    series = x * (1.0 + x2 * (-1.0 / 6.0 + x2 * (3.0 / 40.0)))
    y = tl.where(a < SMALL, series, tl.where(x < 0, -magnitude, magnitude))
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


def asinh_triton(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """asinh of every element; integers and bool promote to the default float dtype, as in ATen."""
    result = float_result_dtype(x)
    hardware_log = x.is_cuda and result in (torch.float16, torch.bfloat16)
    return launch_elementwise(_asinh_kernel, [x], result, out, scalars=(hardware_log,))


def asinh_reference(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse hyperbolic sine of every element (torch.asinh)."""
    return torch.asinh(x, out=out)



def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int = 4096) -> BenchCase:
    x = (torch.randn(rows, cols, device=device) * 100).to(dtype)
    return BenchCase((x,), bytes_moved=2 * x.numel() * x.element_size())

register_aten("aten::asinh", asinh_triton)
register_aten("aten::asinh.out", asinh_triton)
register_aten("aten::asinh_", lambda self: asinh_triton(self, out=self))
asinh = register("asinh", reference=asinh_reference, triton=asinh_triton, flaggems="ops.asinh",
                  bench_case=_bench_case)
