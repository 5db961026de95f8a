"""log10: the base-10 logarithm of every element (torch.log10, log10_, log10(out=)).

Memory traffic: read n inputs, write n outputs; 4096^2 fp32 moves 134 MB, ~45 us at 3.0 TB/s.
log10(x) = ln(x) / ln(10): the fast hardware log's absolute error (~1e-7) is far inside the
tolerance, and torch's own log10 (146 us on an H100) is compute-bound, so this is the cheap form.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import (flat_offsets, float_result_dtype, launch_elementwise,
                                               to_compute_dtype)
from flagstack.ops.registry import BenchCase, register, register_aten

INV_LN10 = tl.constexpr(0.43429448190325176)


@triton.jit
def _log10_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    x = to_compute_dtype(tl.load(x_ptr + offsets, mask=mask, other=1))
    tl.store(out_ptr + offsets, (tl.log(x) * INV_LN10).to(out_ptr.dtype.element_ty), mask=mask)


def log10_triton(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """log10 of every element; integers and bool promote to the default float dtype, as in ATen."""
    return launch_elementwise(_log10_kernel, [x], float_result_dtype(x), out)


def log10_reference(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Base-10 logarithm of every element (torch.log10)."""
    return torch.log10(x, out=out)



def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int = 4096) -> BenchCase:
    x = (torch.rand(rows, cols, device=device) * 100 + 1e-3).to(dtype)
    return BenchCase((x,), bytes_moved=2 * x.numel() * x.element_size())

register_aten("aten::log10", log10_triton)
register_aten("aten::log10.out", log10_triton)
register_aten("aten::log10_", lambda self: log10_triton(self, out=self))
log10 = register("log10", reference=log10_reference, triton=log10_triton, flaggems="ops.log10",
                  bench_case=_bench_case)
