"""pixel_shuffle and pixel_unshuffle (F.pixel_shuffle / F.pixel_unshuffle and their out= forms); any
dtype, any batch dims, any strides. The output's memory format is ATen's: contiguous on CUDA (ATen runs
its reshape-permute-clone composite there), the input's channels-last kept on CPU (its CPU kernel).

Both are one permutation between a "spatial" tensor [B, C, H*r, W*r] and a "channel" tensor
[B, C*r*r, H, W]: spatial[b, c, h*r+i, w*r+j] = channel[b, c*r*r + i*r + j, h, w]. One kernel walks
the spatial tensor in BLOCK_R x BLOCK_C tiles of (row = (b, c, h*r+i), col = w*r+j); the row part of
each address is computed once per row and the col part once per column (r is a constexpr, so // and %
by r are shifts for powers of two). Shuffle reads the channel side and writes the spatial side
contiguously; unshuffle reads the spatial side contiguously and writes the channel side.
Memory traffic: read n, write n; 16x256x64x64 bf16 moves 67 MB, ~22 us at 3.0 TB/s.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.images import bench_images, output_memory_format
from flagstack.ops.challenge.pointwise import check_same_dtype, resize_out
from flagstack.ops.registry import BenchCase, register, register_aten

TILE = 4096  # elements per program


@triton.jit
def _permute_kernel(spatial_ptr, channel_ptr, n_rows, n_cols, channels, rows_per_plane,
                    s_b, s_c, s_h, s_w, c_b, c_c, c_h, c_w,
                    R: tl.constexpr, TO_SPATIAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    plane = rows // rows_per_plane  # b * channels + c
    row_in_plane = rows % rows_per_plane  # h * R + i
    b, c = plane // channels, plane % channels
    h, i = row_in_plane // R, row_in_plane % R
    w, j = cols // R, cols % R
    spatial_at = (b * s_b + c * s_c + row_in_plane * s_h)[:, None] + (cols * s_w)[None, :]
    channel_at = (b * c_b + (c * R * R + i * R) * c_c + h * c_h)[:, None] + (j * c_c + w * c_w)[None, :]
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    if TO_SPATIAL:
        tl.store(spatial_ptr + spatial_at, tl.load(channel_ptr + channel_at, mask=mask), mask=mask)
    else:
        tl.store(channel_ptr + channel_at, tl.load(spatial_ptr + spatial_at, mask=mask), mask=mask)


def _as_4d(t: torch.Tensor) -> torch.Tensor | None:
    """t viewed as [B, C, H, W] (batch dims merged) without a copy; None if that needs a copy."""
    try:
        return t.view(-1, *t.shape[-3:])
    except RuntimeError:
        return None


def _launch(spatial: torch.Tensor, channel: torch.Tensor, r: int, to_spatial: bool) -> None:
    """Copy between spatial [B, C, H*r, W*r] and channel [B, C*r*r, H, W] views, either way."""
    _, channels, height, width = spatial.shape
    n_rows, n_cols = spatial.shape[0] * channels * height, width
    block_c = min(triton.next_power_of_2(n_cols), TILE)
    block_r = min(TILE // block_c, triton.next_power_of_2(n_rows))
    grid = (triton.cdiv(n_rows, block_r), triton.cdiv(n_cols, block_c))
    _permute_kernel[grid](spatial, channel, n_rows, n_cols, channels, height, *spatial.stride(),
                          *channel.stride(), R=r, TO_SPATIAL=to_spatial, BLOCK_R=block_r, BLOCK_C=block_c,
                          num_warps=8)


def _run(x: torch.Tensor, shape: list[int], r: int, shuffle: bool, out: torch.Tensor | None) -> torch.Tensor:
    """Allocate or check `out`, then permute x into it (through a contiguous buffer if out's batch
    dims cannot be merged)."""
    if out is None:
        layout = output_memory_format(x) if x.device.type == "cpu" else torch.contiguous_format
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
    else:
        check_same_dtype(x.dtype, out)
        resize_out(out, shape)
    if out.numel() == 0:
        return out
    target = _as_4d(out)
    if target is None:
        return out.copy_(_run(x, shape, r, shuffle, None))
    source = _as_4d(x)
    source = source if source is not None else x.reshape(-1, *x.shape[-3:])
    spatial, channel = (target, source) if shuffle else (source, target)
    _launch(spatial, channel, r, to_spatial=shuffle)
    return out


def _check(x: torch.Tensor, factor: int, op: str, name: str) -> None:
    """ATen's argument checks shared by both directions."""
    if x.dim() < 3:
        raise RuntimeError(f"{op} expects input to have at least 3 dimensions, but got input with "
                           f"{x.dim()} dimension(s)")
    if factor <= 0:
        raise RuntimeError(f"{op} expects a positive {name}, but got {factor}")


def pixel_shuffle_triton(x: torch.Tensor, upscale_factor: int, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """[*, C*r*r, H, W] -> [*, C, H*r, W*r] with r = upscale_factor."""
    r = int(upscale_factor)
    _check(x, r, "pixel_shuffle", "upscale_factor")
    c, h, w = x.shape[-3:]
    if c % (r * r):
        raise RuntimeError(f"pixel_shuffle expects its input's 'channel' dimension to be divisible by the "
                           f"square of upscale_factor, but input.size(-3)={c} is not divisible by {r * r}")
    return _run(x, [*x.shape[:-3], c // (r * r), h * r, w * r], r, True, out)


def pixel_unshuffle_triton(x: torch.Tensor, downscale_factor: int, *,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """[*, C, H*r, W*r] -> [*, C*r*r, H, W] with r = downscale_factor."""
    r = int(downscale_factor)
    _check(x, r, "pixel_unshuffle", "downscale_factor")
    c, h, w = x.shape[-3:]
    for dim, size, name in ((-2, h, "height"), (-1, w, "width")):
        if size % r:
            raise RuntimeError(f"pixel_unshuffle expects {name} to be divisible by downscale_factor, but "
                               f"input.size({dim})={size} is not divisible by {r}")
    return _run(x, [*x.shape[:-3], c * r * r, h // r, w // r], r, False, out)


def pixel_shuffle_reference(x: torch.Tensor, upscale_factor: int, *,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """Channels to space (torch's pixel_shuffle)."""
    if out is None:
        return torch.nn.functional.pixel_shuffle(x, upscale_factor)
    return torch.ops.aten.pixel_shuffle.out(x, upscale_factor, out=out)


def pixel_unshuffle_reference(x: torch.Tensor, downscale_factor: int, *,
                              out: torch.Tensor | None = None) -> torch.Tensor:
    """Space to channels (torch's pixel_unshuffle)."""
    if out is None:
        return torch.nn.functional.pixel_unshuffle(x, downscale_factor)
    return torch.ops.aten.pixel_unshuffle.out(x, downscale_factor, out=out)


def _shuffle_case(rows: int, dtype: torch.dtype, device: str, cols: int | None = None) -> BenchCase:
    """Core shape at rows=4096, cols=64: 16x256x64x64, factor 2."""
    x = bench_images(rows, 256, cols, dtype, device)
    return BenchCase((x, 2), bytes_moved=2 * x.numel() * x.element_size())


def _unshuffle_case(rows: int, dtype: torch.dtype, device: str, cols: int | None = None) -> BenchCase:
    """Core shape at rows=4096, cols=64: 16x64x128x128, factor 2 (the shuffle's output)."""
    x = bench_images(rows, 64, 2 * cols if cols else None, dtype, device, cuda_side=128)
    return BenchCase((x, 2), bytes_moved=2 * x.numel() * x.element_size())


register_aten("aten::pixel_shuffle", pixel_shuffle_triton)
register_aten("aten::pixel_shuffle.out", pixel_shuffle_triton)
register_aten("aten::pixel_unshuffle", pixel_unshuffle_triton)
register_aten("aten::pixel_unshuffle.out", pixel_unshuffle_triton)
pixel_shuffle = register("pixel_shuffle", reference=pixel_shuffle_reference, triton=pixel_shuffle_triton,
                         bench_case=_shuffle_case)
pixel_unshuffle = register("pixel_unshuffle", reference=pixel_unshuffle_reference, triton=pixel_unshuffle_triton,
                           bench_case=_unshuffle_case)
