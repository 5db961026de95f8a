"""Helpers shared by max_pool3d and avg_pool3d: ATen's parsing of kernel_size / stride / padding /
dilation, its shape checks (same messages and exception types), the output size rule, and the kernels'
flat offsets and their split into (plane, t, h, w).

The kernels take stride, padding and dilation as constexprs (index math on known small constants
folds into shifts and adds) and index in int32 unless a tensor has 2^31 elements: a window costs
KT*KH*KW loads, and int64 division / multiplication of the split took several times as many
instructions as the loads (max_pool3d was compute-bound at 0.87-0.98x torch)."""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import triton
import triton.language as tl


# Flat offsets switch to int64 this far below 2^31, so that no lane of a block overflows.
WIDE_MARGIN = 1 << 16


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether the kernels index these tensors in int64: near 2^31 elements, and always under the CPU
    interpreter, which checks every int32 add and multiply for overflow (several numpy ops each)."""
    return not tensors[0].is_cuda or max([t.numel() for t in tensors]) >= (1 << 31) - WIDE_MARGIN


@triton.jit
def block_offsets(n, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """This program's BLOCK flat offsets (int64 when WIDE, else int32) and their mask."""
    offsets = tl.program_id(0).to(tl.int64 if WIDE else tl.int32) * BLOCK + tl.arange(0, BLOCK)
    return offsets, offsets < n


@triton.jit
def split_volume(offsets, T, H, W, other_volume):
    """Flat offsets into [planes, T, H, W] -> (plane * other_volume, t, h, w): where the plane starts in
    the other tensor of the pair (an input of other_volume per plane for an output, or the reverse)."""
    w = offsets % W
    h = (offsets // W) % H
    t = (offsets // (W * H)) % T
    return offsets // (W * H * T) * other_volume, t, h, w


def triple(value: int | Sequence[int], error: str, omittable: bool = False) -> tuple[int, int, int]:
    """One int or three ints (stride: also empty, meaning "use the kernel size") -> (T, H, W).

    `error` is ATen's message when the count is wrong (it words it differently per op and argument)."""
    values = [value] if isinstance(value, int) else list(value)
    if len(values) not in (1, 3) and not (omittable and not values):
        raise RuntimeError(error)
    return tuple(values * 3 if len(values) == 1 else values)  # type: ignore[return-value]


def output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """ATen's pooling_output_shape: windows that start inside the input or its left padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def check_pool3d(x: torch.Tensor, kernel: tuple, stride: tuple, pad: tuple, dilation: tuple, ceil_mode: bool,
                 op: str) -> tuple[int, int, int]:
    """ATen's pool3d_shape_check; returns the output (T, H, W)."""
    return _check_shape(tuple(x.shape), kernel, stride, pad, dilation, ceil_mode, op)


@functools.lru_cache(maxsize=1024)  # a pure function of shapes and parameters; ~10 us of host time per call
def _check_shape(shape: tuple, kernel: tuple, stride: tuple, pad: tuple, dilation: tuple, ceil_mode: bool,
                 op: str) -> tuple[int, int, int]:
    if min(kernel) <= 0:
        raise RuntimeError(f"kernel size should be greater than zero, but got kT: {kernel[0]} kH: {kernel[1]} "
                           f"kW: {kernel[2]}")
    if min(stride) <= 0:
        raise RuntimeError("stride should not be zero")
    if min(dilation) <= 0:
        raise RuntimeError(f"dilation should be greater than zero, but got dilationT: {dilation[0]} "
                           f"dilationH: {dilation[1]} dilationW: {dilation[2]}")
    if len(shape) not in (4, 5):
        raise RuntimeError("non-empty 4D or 5D (batch mode) tensor expected for input")
    if any(s == 0 for s in shape[-4:]):
        raise RuntimeError(f"{op}(): Expected input's non-batch dimensions to have positive length, but input "
                           f"has a shape of {list(shape)} and non-batch dimension {math.prod(shape[-4:])} has "
                           "length zero!")
    for k, p, d in zip(kernel, pad, dilation):
        if p > ((k - 1) * d + 1) // 2:
            raise RuntimeError(f"pad should be at most half of effective kernel size, but got pad={p}, "
                               f"kernel_size={k} and dilation={d}")
    out = tuple(output_size(*args, ceil_mode) for args in zip(shape[-3:], kernel, stride, pad, dilation))
    if min(out) < 1:
        raise RuntimeError(f"Given input size: ({'x'.join(map(str, shape[-4:]))}). Calculated output size: "
                           f"({shape[-4]}x{'x'.join(map(str, out))}). Output size is too small")
    return out  # type: ignore[return-value]
