"""leaky_relu: x if x > 0 else x * negative_slope (F.leaky_relu, leaky_relu_, out=, and backward).

Memory traffic: forward reads n and writes n elements (4096^2 bf16: 67 MB, ~22 us at 3.0 TB/s);
backward reads grad and input and writes the input grad (3n). Floating dtypes only, as in ATen.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import (FLOAT_DTYPES, aten_dtype_name, check_kernel_dtype,
                                               flat_offsets, launch_elementwise, to_compute_dtype)
from flagstack.ops.registry import BenchCase, register, register_aten


@triton.jit
def _leaky_relu_kernel(x_ptr, out_ptr, n, negative_slope, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    x = to_compute_dtype(tl.load(x_ptr + offsets, mask=mask))
    y = tl.where(x > 0, x, x * negative_slope)  # nan and -0 take the second branch, as in ATen
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _leaky_relu_backward_kernel(grad_ptr, x_ptr, out_ptr, n, negative_slope, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    grad = to_compute_dtype(tl.load(grad_ptr + offsets, mask=mask))
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, tl.where(x > 0, grad, grad * negative_slope).to(out_ptr.dtype.element_ty),
             mask=mask)


def _check_out_exact(x: torch.Tensor, out: torch.Tensor | None) -> None:
    # ATen's leaky_relu.out wants out's dtype to equal the input's (no casting).
    if out is not None and out.dtype != x.dtype:
        raise RuntimeError(f"Found dtype {aten_dtype_name(out.dtype)} but expected {aten_dtype_name(x.dtype)}")


def leaky_relu_triton(x: torch.Tensor, negative_slope: float = 0.01, *,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """leaky_relu of every element of a floating tensor."""
    check_kernel_dtype("leaky_relu", x.dtype, FLOAT_DTYPES, x.device)
    _check_out_exact(x, out)
    return launch_elementwise(_leaky_relu_kernel, [x], x.dtype, out, scalars=(float(negative_slope),))


def leaky_relu_inplace(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """In-place leaky_relu_ (ATen's aten::leaky_relu_)."""
    return leaky_relu_triton(x, negative_slope, out=x)


def leaky_relu_backward_triton(grad_output: torch.Tensor, x: torch.Tensor, negative_slope: float,
                               self_is_result: bool, *, grad_input: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of leaky_relu wrt its input (x may be the forward's result when self_is_result)."""
    if self_is_result and negative_slope < 0:  # the sign of x no longer tells the branch taken
        raise RuntimeError("In-place leakyReLu backward calculation is triggered with a negative slope "
                           "which is not supported. This is caused by calling in-place forward function "
                           "with a negative slope, please call out-of-place version instead.")
    result = torch.result_type(grad_output, x)
    check_kernel_dtype("leaky_relu_backward", result, FLOAT_DTYPES, grad_output.device)
    return launch_elementwise(_leaky_relu_backward_kernel, [grad_output, x], result, grad_input,
                              scalars=(float(negative_slope),))


def leaky_relu_reference(x: torch.Tensor, negative_slope: float = 0.01, *,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """x where x > 0, else x * negative_slope (torch's leaky_relu)."""
    if out is None:
        return torch.nn.functional.leaky_relu(x, negative_slope)
    return torch.ops.aten.leaky_relu.out(x, negative_slope, out=out)



def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int = 4096) -> BenchCase:
    x = torch.randn(rows, cols, device=device, dtype=dtype)
    return BenchCase((x, 0.01), bytes_moved=2 * x.numel() * x.element_size())

register_aten("aten::leaky_relu", leaky_relu_triton)
register_aten("aten::leaky_relu.out", leaky_relu_triton)
register_aten("aten::leaky_relu_", leaky_relu_inplace)
register_aten("aten::leaky_relu_backward", leaky_relu_backward_triton)
register_aten("aten::leaky_relu_backward.grad_input", leaky_relu_backward_triton)
leaky_relu = register("leaky_relu", reference=leaky_relu_reference, triton=leaky_relu_triton,
                      flaggems="ops.leaky_relu", bench_case=_bench_case)
