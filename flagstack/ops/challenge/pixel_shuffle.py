"""pixel_shuffle and pixel_unshuffle (F.pixel_shuffle / F.pixel_unshuffle and their out= forms); any
dtype, any batch dims, any strides. The output's memory format is ATen's: contiguous on CUDA (ATen runs
its reshape-permute-clone composite there), the input's channels-last kept on CPU (its CPU kernel).

Both are one permutation between a "spatial" tensor [B, C, H*r, W*r] and a "channel" tensor
[B, C*r*r, H, W]: spatial[b, c, h*r+i, w*r+j] = channel[b, c*r*r + i*r + j, h, w]. A program moves
BG x BW channel pixels for all r x r (i, j): BG "channel rows" g = (b*C + c)*H + h (running across
planes, so small images fill a tile too) times BW columns w. Each side is addressed in its own order:
the spatial side as a [BG*r, BW*r] block of rows (g, i) and columns w*r+j, the channel side as r*r
[BG, BW] blocks of rows (g) and columns w. So loads and stores both run along contiguous memory
(16-byte vectors), and the values change order on chip (a reshape and a permute: one pass through
shared memory). Addressing one side in the other's order, as a single index space does, splits its
accesses into r-strided scalar ones (unshuffle was 0.19x torch that way). Index math is per row and
per column, not per element. r is padded to RP, a power of 2 (block shapes must be); padding lanes
are masked off. Memory traffic: read n, write n; 16x256x64x64 bf16 moves 67 MB, ~22 us at 3.0 TB/s.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.images import bench_images, output_memory_format
from flagstack.ops.challenge.pointwise import check_same_dtype, resize_out
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.launch_cache import CachedLauncher
from flagstack.ops.registry import BenchCase, register, register_aten

# Elements per program (at most; one r x r group if r*r is larger) and channel columns per tile. The
# CPU interpreter pays per program, so there a tile takes many small planes at once.
TILE, MAX_BW = 2048, 64
CPU_TILE, CPU_MAX_BW = 16384, 1024


@triton.jit
def _row_offsets(g, channels, height, b_stride, c_stride, h_stride, C_SCALE: tl.constexpr, H_SCALE: tl.constexpr):
    """Memory offset of channel row g = (b*channels + c)*height + h: b*b_stride + c*C_SCALE*c_stride +
    h*H_SCALE*h_stride (in int64: a tensor may pass 2^31 elements)."""
    plane, h = g // height, g % height
    b, c = (plane // channels).to(tl.int64), (plane % channels).to(tl.int64)
    return b * b_stride + c * C_SCALE * c_stride + h.to(tl.int64) * H_SCALE * h_stride


@triton.jit
def _permute_kernel(spatial_ptr, channel_ptr, n_rows, channels, height, width, s_b, s_c, s_h, s_w,
                    c_b, c_c, c_h, c_w, R: tl.constexpr, RP: tl.constexpr, TO_SPATIAL: tl.constexpr,
                    BG: tl.constexpr, BW: tl.constexpr):
    g0, w0 = tl.program_id(0) * BG, tl.program_id(1) * BW
    # Spatial side: [BG*RP, BW*RP], rows (g, i), columns (w, j).
    sr, sc = tl.arange(0, BG * RP), tl.arange(0, BW * RP)
    g, i = g0 + sr // RP, sr % RP
    s_rows = _row_offsets(g, channels, height, s_b, s_c, s_h, 1, R) + i.to(tl.int64) * s_h
    if R == RP:  # no padding: the columns are one contiguous run
        s_col = w0 * R + sc
        col_ok = s_col < width * R
    else:
        s_col = (w0 + sc // RP) * R + sc % RP
        col_ok = (s_col < width * R) & (sc % RP < R)
    s_at = spatial_ptr + s_rows[:, None] + s_col.to(tl.int64)[None, :] * s_w
    s_mask = ((g < n_rows) & (i < R))[:, None] & col_ok[None, :]
    # Channel side: [RP, RP, BG, BW], indexed (i, j, g, w); channel c*R*R + i*R + j.
    gc, w = g0 + tl.arange(0, BG), w0 + tl.arange(0, BW)
    c_rows = _row_offsets(gc, channels, height, c_b, c_c, c_h, R * R, 1)
    i4, j4 = tl.arange(0, RP)[:, None, None, None], tl.arange(0, RP)[None, :, None, None]
    c_at = (channel_ptr + (i4 * R + j4).to(tl.int64) * c_c + c_rows[None, None, :, None]
            + (w.to(tl.int64) * c_w)[None, None, None, :])
    c_mask = (i4 < R) & (j4 < R) & (gc < n_rows)[None, None, :, None] & (w < width)[None, None, None, :]
    if TO_SPATIAL:
        values = tl.reshape(tl.permute(tl.load(c_at, mask=c_mask), (2, 0, 3, 1)), (BG * RP, BW * RP))
        tl.store(s_at, values, mask=s_mask)
    else:
        values = tl.permute(tl.reshape(tl.load(s_at, mask=s_mask), (BG, RP, BW, RP)), (1, 3, 0, 2))
        tl.store(c_at, values, mask=c_mask)


# A small shuffle takes ~2 us on the GPU and Triton's argument binding more on the host: keyed launches
_LAUNCH = CachedLauncher(_permute_kernel)


def _as_4d(t: torch.Tensor) -> torch.Tensor | None:
    """t viewed as [B, C, H, W] (batch dims merged) without a copy; None if that needs a copy."""
    if t.dim() == 4:
        return t
    try:
        return t.view(-1, *t.shape[-3:])
    except RuntimeError:
        return None


def _launch(spatial: torch.Tensor, channel: torch.Tensor, r: int, to_spatial: bool) -> None:
    """Copy between spatial [B, C, H*r, W*r] and channel [B, C*r*r, H, W] views, either way."""
    batch, channels = spatial.shape[:2]
    height, width = channel.shape[2:]
    n_rows = batch * channels * height
    tile, max_bw = (TILE, MAX_BW) if spatial.is_cuda else (CPU_TILE, CPU_MAX_BW)
    rp = next_power_of_2(r)
    bw = min(next_power_of_2(width), max_bw, max(1, tile // (rp * rp)))
    bg = min(next_power_of_2(n_rows), max(1, tile // (rp * rp * bw)))
    _LAUNCH(None, (cdiv(n_rows, bg), cdiv(width, bw)),
            (spatial, channel, n_rows, channels, height, width, *spatial.stride(), *channel.stride()),
            {"R": r, "RP": rp, "TO_SPATIAL": to_spatial, "BG": bg, "BW": bw}, num_warps=4)


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
