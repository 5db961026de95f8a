"""Copy a 4-D image batch between the two dense memory formats, NCHW (contiguous) and NHWC (channels-last),
in either direction: a batched 2-D transpose of [C, H*W] per image. conv_transpose2d uses it for its
operands and output (its kernel reads and writes channels innermost).

Why not `x.contiguous(memory_format=...)`: on the H100 torch's generic strided copy moved 16x64x64x64 bf16
(8.4 MB each way) in ~22 us, 25% of copy bandwidth, because one side of it is always element-strided. Here a
program loads a [BLOCK_C, BLOCK_P] tile along the source's contiguous axis and stores it along the
destination's; Triton turns the tile around in shared memory between the two. Memory traffic: read n, write n.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.host import cdiv
from flagstack.ops.launch_cache import CachedLauncher, aligned

BLOCK_C, BLOCK_P = 64, 64  # 64 channels x 64 pixels: 8 KB of bf16, each side of it a run of 128 bytes


@triton.jit
def _channels_copy_kernel(src_ptr, dst_ptr, C, P, s_n, s_c, s_p, d_n, d_c, d_p,
                          BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # s_p == 1 (NCHW source) or s_c == 1 (NHWC source) reaches the compiler as a constant (Triton
    # specializes integer arguments equal to 1), so each side is read or written in 16-byte vectors.
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.program_id(2).to(tl.int64)
    mask = (c < C)[:, None] & (p < P)[None, :]
    c64, p64 = c.to(tl.int64)[:, None], p.to(tl.int64)[None, :]
    tile = tl.load(src_ptr + n * s_n + c64 * s_c + p64 * s_p, mask=mask)
    tl.store(dst_ptr + n * d_n + c64 * d_c + p64 * d_p, tile, mask=mask)


_LAUNCH = CachedLauncher(_channels_copy_kernel)  # conv_transpose2d's host time counts (launch_cache.py)


def _pixels_flat(x: torch.Tensor) -> bool:
    """Whether H and W of x can be walked as one pixel axis (stride of h = W * stride of w)."""
    return x.shape[3] == 1 or x.shape[2] == 1 or x.stride(2) == x.shape[3] * x.stride(3)


def copy_channels(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """dst.copy_(src) for 4-D tensors of one shape and dtype whose pixels are each one flat axis (NCHW,
    NHWC and their batch slices); anything else goes to torch's copy."""
    if src.shape != dst.shape or src.dim() != 4:
        raise ValueError(f"copy_channels wants two 4-D tensors of one shape, got {list(src.shape)} and "
                         f"{list(dst.shape)}")
    n, c, h, w = src.shape
    if not (_pixels_flat(src) and _pixels_flat(dst)) or src.dtype != dst.dtype or n > 65535:  # grid's z limit
        return dst.copy_(src)
    if dst.numel():
        strides = (src.stride(0), src.stride(1), src.stride(3), dst.stride(0), dst.stride(1), dst.stride(3))
        _LAUNCH((src.shape, strides, src.dtype, aligned(src), aligned(dst)),
                (cdiv(h * w, BLOCK_P), cdiv(c, BLOCK_C), n), (src, dst, c, h * w, *strides),
                {"BLOCK_C": BLOCK_C, "BLOCK_P": BLOCK_P})
    return dst


def to_memory_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """x.contiguous(memory_format=...) for a 4-D tensor, through copy_channels when a copy is needed."""
    if x.is_contiguous(memory_format=memory_format):
        return x
    return copy_channels(x, torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format))
