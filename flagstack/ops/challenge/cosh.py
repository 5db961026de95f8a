"""cosh: the hyperbolic cosine of every element (torch.cosh, cosh_, cosh(out=)).

Memory traffic: read n inputs, write n outputs; 4096^2 bf16 moves 67 MB, ~22 us at 3.0 TB/s.
cosh(x) = e + 1/(4e) with e = e^(|x| - ln 2), finite up to cosh's own overflow. fp32 results need
fp32 relative accuracy up to 3.4e38, which the fast hardware exp (its error grows with |x|) does not
give, so fp32/fp64 inputs compute in fp64; fp16/bf16 compute in fp32 (their rounding dominates).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import flat_offsets, float_result_dtype, launch_elementwise
from flagstack.ops.registry import BenchCase, register, register_aten

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _cosh_kernel(x_ptr, out_ptr, n, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    x = tl.abs(tl.load(x_ptr + offsets, mask=mask).to(COMPUTE))
    # Only the exp needs fp64 for an fp32 result; the rest runs in fp32 (fp64 for fp64): rounding e to
    # fp32, the division and the sum add < 3 ulp, where an fp64 division cost as much as the exp.
    e = tl.exp(x - LN2).to(tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32)
    tl.store(out_ptr + offsets, (e + 0.25 / e).to(out_ptr.dtype.element_ty), mask=mask)


def cosh_triton(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """cosh of every element; integers and bool promote to the default float dtype, as in ATen."""
    result = float_result_dtype(x)
    compute = tl.float64 if result in (torch.float32, torch.float64) else tl.float32
    return launch_elementwise(_cosh_kernel, [x], result, out, scalars=(compute,))


def cosh_reference(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Hyperbolic cosine of every element (torch.cosh)."""
    return torch.cosh(x, out=out)



def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int = 4096) -> BenchCase:
    x = (torch.randn(rows, cols, device=device) * 4).to(dtype)
    return BenchCase((x,), bytes_moved=2 * x.numel() * x.element_size())

register_aten("aten::cosh", cosh_triton)
register_aten("aten::cosh.out", cosh_triton)
register_aten("aten::cosh_", lambda self: cosh_triton(self, out=self))
cosh = register("cosh", reference=cosh_reference, triton=cosh_triton, flaggems="ops.cosh",
                 bench_case=_bench_case)
