"""Shared host-side machinery of the challenge's elementwise ops: ATen-style dtype checks,
broadcasting, `out=` resizing and casting, and the launch of a flat 1-D Triton kernel.

A kernel used here has the signature `kernel(*input_ptrs, out_ptr, n, *scalars, BLOCK=...)` and
treats every operand as a flat array of n elements. That is valid when all operands share one dense
layout (contiguous, or e.g. all transposed alike); otherwise the inputs are made contiguous and the
result is copied into `out` afterwards (one extra pass, only on that rare path).
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
import triton
import triton.language as tl

from flagstack.ops.launch_cache import launcher

# ATen's names for dtypes, used in its error messages ("result type Float can't be cast ...").
_ATEN_NAMES = {
    torch.bool: "Bool", torch.uint8: "Byte", torch.int8: "Char", torch.int16: "Short",
    torch.int32: "Int", torch.int64: "Long", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.float32: "Float", torch.float64: "Double",
}
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BLOCK = 2048  # 8 elements per thread at 8 warps: 16-byte vector loads for fp16/bf16/fp32


def aten_dtype_name(dtype: torch.dtype) -> str:
    """The dtype as ATen spells it in error messages (Float, Half, Long...)."""
    return _ATEN_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def check_kernel_dtype(op: str, dtype: torch.dtype, allowed: Sequence[torch.dtype],
                       device: torch.device) -> None:
    """Raise NotImplementedError as ATen's dtype dispatch does when `dtype` has no kernel."""
    if dtype not in allowed:
        raise NotImplementedError(f'"{op}_{device.type}" not implemented for \'{aten_dtype_name(dtype)}\'')


def float_result_dtype(x: torch.Tensor) -> torch.dtype:
    """Result dtype of a unary float op (log10, cosh...): integers and bool become the default float."""
    return x.dtype if x.dtype.is_floating_point else torch.get_default_dtype()


def check_out_dtype(result: torch.dtype, out: torch.Tensor) -> None:
    """ATen's rule for `out=` and in-place forms: the result must be castable to out's dtype."""
    if not torch.can_cast(result, out.dtype):
        raise RuntimeError(f"result type {aten_dtype_name(result)} can't be cast to the desired "
                           f"output type {aten_dtype_name(out.dtype)}")


def check_same_dtype(expected: torch.dtype, out: torch.Tensor) -> None:
    """ATen's rule for ops whose `out=` must have the input's dtype exactly (tril, roll)."""
    if out.dtype != expected:
        raise RuntimeError(f"Expected out tensor to have dtype {str(expected).replace('torch.', '')}, "
                           f"but got {str(out.dtype).replace('torch.', '')} instead")


def resize_out(out: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resize `out` to `shape` as ATen does, warning when a non-empty tensor had another shape."""
    if tuple(out.shape) != tuple(shape):
        if out.numel() != 0:
            warnings.warn(f"An output with one or more elements was resized since it had shape "
                          f"{list(out.shape)}, which does not match the required output shape "
                          f"{list(shape)}.", UserWarning, stacklevel=3)
        out.resize_(shape)
    return out


def is_dense(t: torch.Tensor) -> bool:
    """True if t's elements fill a gap-free block of memory without overlap, in any dim order."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda p: p[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def same_dense_layout(tensors: Sequence[torch.Tensor]) -> bool:
    """True if all tensors have one shape, one dense layout, so their storage can be walked flat."""
    first = tensors[0]
    return is_dense(first) and all(t.shape == first.shape and t.stride() == first.stride()
                                   for t in tensors[1:])


def launch_elementwise(kernel: Callable, inputs: Sequence[torch.Tensor], result_dtype: torch.dtype,
                       out: torch.Tensor | None = None, scalars: tuple = (), inplace: bool = False,
                       num_warps: int = 8, block: int = BLOCK) -> torch.Tensor:
    """Run a flat elementwise kernel over broadcast `inputs`, writing a `result_dtype` result.

    out=None allocates the result in the inputs' layout; a given `out` is resized (not when
    `inplace`, where it must already have the broadcast shape) and the result is cast into it.
    """
    first = inputs[0]
    # Fast path for the common call (no out=, one shape, contiguous, one device): nothing to
    # broadcast, compare or copy. The general path below costs ~4x more host time per call,
    # which an H100 timing of a 4096x4096 op (~28 us of GPU time) already shows.
    if out is None and all(t.shape == first.shape and t.is_contiguous() and t.device == first.device
                           for t in inputs):
        out = torch.empty_like(first, dtype=result_dtype)
        _launch(kernel, inputs, out, scalars, num_warps, block)
        return out
    device = next((t.device for t in inputs if t.dim() > 0), first.device)
    # 0-dim CPU tensors (Python scalars wrapped by ATen) may be mixed with CUDA tensors.
    inputs = [t.to(device) if t.dim() == 0 and t.device != device else t for t in inputs]
    shapes = [t.shape for t in inputs]
    shape = shapes[0] if all(s == shapes[0] for s in shapes) else torch.broadcast_shapes(*shapes)
    if out is not None:
        check_out_dtype(result_dtype, out)
        if inplace and tuple(out.shape) != tuple(shape):
            raise RuntimeError(f"output with shape {list(out.shape)} doesn't match the broadcast "
                               f"shape {list(shape)}")
        resize_out(out, shape)
    inputs = [t if t.shape == shape else t.expand(shape) for t in inputs]
    if out is None:
        layout_source = inputs[0] if same_dense_layout(inputs) else None
        out = (torch.empty_like(layout_source, dtype=result_dtype) if layout_source is not None
               else torch.empty(shape, dtype=result_dtype, device=device))
    # Every operand walked flat and the kernel writes `out` directly, unless layouts differ or
    # the result is cast into out's dtype: then contiguous copies are walked instead.
    if out.dtype == result_dtype and same_dense_layout([*inputs, out]):
        target = out
    else:
        inputs = [t.contiguous() for t in inputs]
        direct = out.dtype == result_dtype and out.is_contiguous()
        target = out if direct else torch.empty(shape, dtype=result_dtype, device=device)
    _launch(kernel, inputs, target, scalars, num_warps, block)
    if target is not out:
        out.copy_(target)
    return out


def _launch(kernel: Callable, inputs: Sequence[torch.Tensor], target: torch.Tensor, scalars: tuple,
            num_warps: int, block: int) -> None:
    n = target.numel()
    if n:  # plain integer ceil-division: triton.cdiv is a slower constexpr_function on the host
        # launched by a key read off the arguments: Triton's own binding is most of a small op's host time
        launcher(kernel)(None, ((n + block - 1) // block,), (*inputs, target, n, *scalars), {"BLOCK": block},
                         num_warps=num_warps)


@triton.jit
def flat_offsets(n, BLOCK: tl.constexpr):
    """This program's BLOCK flat element offsets (int64: tensors may pass 2^31 elements) and mask."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offsets, offsets < n


@triton.jit
def to_compute_dtype(x):
    """Math precision as ATen's opmath: fp64 stays fp64, everything else computes in fp32."""
    # One return statement: the GPU compiler visits the code after a static `if ...: return` too
    # and rejects two return types (fp64 vs fp32); the interpreter does not notice.
    return x.to(tl.float64 if x.dtype == tl.float64 else tl.float32)
