"""grid_sample (F.grid_sample): sample [N, C, (D,) H, W] at the normalized points of a grid [N, (D,) H', W',
2 or 3] with bilinear (trilinear in 3-D), nearest or bicubic (2-D only) interpolation, zeros / border /
reflection padding and align_corners (aten::grid_sampler_2d, grid_sampler_3d and their .out forms).
Backward (grad of input and grid) is in grid_sample_backward.py and shares the coordinate helpers here.

Coordinates follow ATen's CUDA kernel: unnormalize, then clip or reflect (bilinear, nearest) or pad
every tap (bicubic); non-finite or huge coordinates become -100, i.e. outside (CPU ATen differs there
and is not followed). Nearest rounds half to even. Math in fp32 (fp64 for fp64).

One program per BLOCK_P output points (one per thread on CUDA) and a group of channels, BLOCK_C of them
unrolled at a time: the points' coordinates and tap weights are computed once per program, each channel's
taps gathered as [BLOCK_P] vectors (points contiguous, so the output store is coalesced). Memory traffic:
read input once, grid once, write the output: 8x32x128x128 fp32 -> 34 MB, ~11 us at 3.0 TB/s; but random
points make it a gather of 4 taps per output, bound by latency: 4 channels x 4 taps = 16 loads in flight
per thread, few registers (many warps per SM: the [channels, points] tiles this replaced took 255 registers
and spilled), int32 positions unless a tensor needs 64-bit offsets, and channels split over programs when
points are few (the 2x32x64x64 core case has 64 blocks of 128 points for 132 SMs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.images import bench_images
from flagstack.ops.challenge.pointwise import aten_dtype_name, check_kernel_dtype, check_same_dtype, resize_out, \
    to_compute_dtype
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.launch_cache import CachedLauncher, aligned
from flagstack.ops.registry import BenchCase, register, register_aten

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # as ATen
BILINEAR, NEAREST, BICUBIC = 0, 1, 2  # ATen's GridSamplerInterpolation
ZEROS, BORDER, REFLECTION = 0, 1, 2  # ATen's GridSamplerPadding
TILE = 4096  # channels x points per program in the backward; points per program forward on CPU
CUDA_BLOCK_C, CUDA_WARPS = 4, 4  # forward on CUDA: one point per thread, 4 channels unrolled
CUDA_PROGRAMS = 4096  # split channels over programs until about this many (several waves on an H100)


@triton.jit
def unnormalize(coord, size, ALIGN: tl.constexpr):
    """[-1, 1] -> pixel coordinate: -1 and 1 are the corner pixels' centres (ALIGN) or outer edges."""
    if ALIGN:  # halving as * 0.5: Triton's fp32 `/` is an approximate division on CUDA
        return (coord + 1) * 0.5 * (size - 1)
    else:
        return ((coord + 1) * size - 1) * 0.5


@triton.jit
def clip(coord, size):
    """Clamp into [0, size - 1]; NaN becomes 0 (CUDA's fmaxf)."""
    return tl.where(coord != coord, 0.0, tl.minimum(tl.maximum(coord, 0.0), size - 1.0))


@triton.jit
def divide(a, b):
    """a / b rounded to nearest, as ATen's CUDA code. Triton compiles fp32 `/` to the approximate div.full.f32
    (up to 2 ulp off): k * span / span can come out just below k, so a point on a reflection bound flipped the
    wrong way (to the opposite edge)."""
    if a.dtype == tl.float32:
        return tl.math.div_rn(a, b)
    else:
        return a / b  # fp64 `/` is correctly rounded (div.rn.f64)


@triton.jit
def reflect(coord, twice_low, twice_high):
    """Reflect coord about the bounds twice_low / 2 and twice_high / 2 until it lies between them."""
    low = twice_low * 0.5
    span = (twice_high - twice_low) * 0.5
    dist = tl.abs(coord - low)
    flips = tl.floor(divide(dist, span))
    extra = dist % span  # fmod, as ATen
    reflected = tl.where(flips % 2.0 == 0.0, extra + low, span - extra + low)
    return tl.where(span > 0, reflected, 0.0)  # a single pixel with align_corners: always 0


@triton.jit
def safe_index(coord):
    """Coordinates outside int range (or not finite) become -100: outside the image, as ATen."""
    return tl.where((coord >= -2147483648.0) & (coord <= 2147483646.0), coord, -100.0)


@triton.jit
def pad(coord, size, PADDING: tl.constexpr, ALIGN: tl.constexpr):
    """ATen's compute_coordinates: border clips, reflection reflects then clips, zeros leaves as is."""
    if PADDING == 1:
        coord = clip(coord, size)
    elif PADDING == 2:
        if ALIGN:
            coord = clip(reflect(coord, 0.0, 2.0 * (size - 1)), size)
        else:
            coord = clip(reflect(coord, -1.0, 2.0 * size - 1), size)
    return safe_index(coord)


@triton.jit
def round_half_even(x):
    """nearbyint: the nearest integer, ties to even (exact: x - floor(x) has no rounding)."""
    low = tl.floor(x)
    frac = x - low
    up = (frac > 0.5) | ((frac == 0.5) & (low % 2.0 != 0.0))
    return tl.where(up, low + 1.0, low)


@triton.jit
def cubic_distance(t, K: tl.constexpr):
    """Distance |d| from bicubic tap K (at -1, 0, 1, 2 from floor) to the point at fraction t."""
    if K == 0:
        d = t + 1.0
    elif K == 1:
        d = t
    elif K == 2:
        d = 1.0 - t
    else:
        d = 2.0 - t
    return d


@triton.jit
def cubic_weight(t, K: tl.constexpr):
    """Weight of tap K (at -1, 0, 1, 2 from floor) for fraction t: Keys' cubic kernel with A = -0.75."""
    A: tl.constexpr = -0.75
    d = cubic_distance(t, K)
    if K == 1 or K == 2:  # |d| <= 1
        return ((A + 2.0) * d - (A + 3.0)) * d * d + 1.0
    else:  # 1 < |d| < 2
        return ((A * d - 5.0 * A) * d + 8.0 * A) * d - 4.0 * A


@triton.jit
def axis_start(g, size, MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN: tl.constexpr):
    """(source coordinate, first tap) along one axis for the normalized coordinate g."""
    if MODE == 2:  # bicubic pads each tap, not the point
        coord = unnormalize(g, size, ALIGN)
        return coord, tl.floor(coord)
    coord = pad(unnormalize(g, size, ALIGN), size, PADDING, ALIGN)
    if MODE == 1:
        return coord, round_half_even(coord)
    return coord, tl.floor(coord)


@triton.jit
def axis_tap(coord, start, size, K: tl.constexpr, MODE: tl.constexpr, PADDING: tl.constexpr,
             ALIGN: tl.constexpr):
    """(index, in-bounds mask, weight) of tap K along one axis."""
    if MODE == 2:
        at = pad(start + (K - 1.0), size, PADDING, ALIGN)
        weight = cubic_weight(coord - start, K)
    elif MODE == 1:
        at = start
        weight = tl.full(coord.shape, 1.0, coord.dtype)
    else:
        at = start + K
        weight = (start + 1.0 - coord) if K == 0 else (coord - start)
    inside = (at >= 0) & (at <= size - 1.0)
    return tl.where(inside, at, 0).to(tl.int64), inside, weight


@triton.jit
def split_points(pos, out_d, out_h, out_w):
    """Batch index and (d, h, w) output position of the flat output points `pos`."""
    ow = pos % out_w
    rest = pos // out_w
    oh = rest % out_h
    rest = rest // out_h
    return rest // out_d, rest % out_d, oh, ow


@triton.jit
def _forward_kernel(x_ptr, grid_ptr, out_ptr, n_points, channels, channels_per_program, in_d, in_h, in_w,
                    out_d, out_h, out_w, x_sn, x_sc, x_sd, x_sh, x_sw, g_sn, g_sd, g_sh, g_sw, g_sk,
                    o_sn, o_sc, o_sd, o_sh, o_sw, MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN: tl.constexpr,
                    IS_3D: tl.constexpr, WIDE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pos = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    if WIDE:  # 64-bit offsets only where a tensor needs them (int64 division and products cost registers)
        pos = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    live = pos < n_points
    n, od, oh, ow = split_points(pos, out_d, out_h, out_w)
    g_at = grid_ptr + n * g_sn + od * g_sd + oh * g_sh + ow * g_sw
    x, x0 = axis_start(to_compute_dtype(tl.load(g_at, mask=live, other=0)), in_w, MODE, PADDING, ALIGN)
    y, y0 = axis_start(to_compute_dtype(tl.load(g_at + g_sk, mask=live, other=0)), in_h, MODE, PADDING, ALIGN)
    if IS_3D:
        z, z0 = axis_start(to_compute_dtype(tl.load(g_at + 2 * g_sk, mask=live, other=0)), in_d, MODE, PADDING,
                           ALIGN)
    TAPS: tl.constexpr = 1 if MODE == 1 else (4 if MODE == 2 else 2)
    TAPS_Z: tl.constexpr = TAPS if IS_3D else 1
    out_at = n * o_sn + od * o_sd + oh * o_sh + ow * o_sw
    c_first = tl.program_id(1) * channels_per_program
    c_end = tl.minimum(c_first + channels_per_program, channels)
    for c_start in range(c_first, c_end, BLOCK_C):
        for dc in tl.static_range(BLOCK_C):  # unrolled: every channel's taps are loaded before they are summed
            c = c_start + dc
            if WIDE:
                c = c.to(tl.int64)
            c_live = live & (c < c_end)
            x_at = x_ptr + n * x_sn + c * x_sc
            acc = tl.zeros([BLOCK_P], x.dtype)
            for kz in tl.static_range(TAPS_Z):  # taps in ATen's order (z, then y, then x), so sums round alike
                if IS_3D:
                    iz, z_in, wz = axis_tap(z, z0, in_d, kz, MODE, PADDING, ALIGN)
                for ky in tl.static_range(TAPS):
                    iy, y_in, wy = axis_tap(y, y0, in_h, ky, MODE, PADDING, ALIGN)
                    for kx in tl.static_range(TAPS):
                        ix, x_in, wx = axis_tap(x, x0, in_w, kx, MODE, PADDING, ALIGN)
                        at = iy * x_sh + ix * x_sw
                        inside = c_live & y_in & x_in
                        weight = wx * wy
                        if IS_3D:
                            at += iz * x_sd
                            inside = inside & z_in
                            weight = weight * wz
                        values = to_compute_dtype(tl.load(x_at + at, mask=inside, other=0))
                        if MODE == 1:  # a copy (keeps -0), as ATen
                            acc = values
                        else:
                            acc += values * weight
            tl.store(out_ptr + out_at + c * o_sc, acc.to(out_ptr.dtype.element_ty), mask=c_live)


def check_inputs(x: torch.Tensor, grid: torch.Tensor, mode: int, padding: int, dims: int) -> None:
    """ATen's grid_sampler checks (RuntimeError), then the dtypes our kernels take (NotImplementedError)."""
    if x.device != grid.device:
        raise RuntimeError(f"grid_sampler(): expected input and grid to be on same device, but input is on "
                           f"{x.device} and grid is on {grid.device}")
    sizes = f"input with sizes {list(x.shape)} and grid with sizes {list(grid.shape)}"
    if x.dim() != dims + 2 or grid.dim() != dims + 2:
        raise RuntimeError(f"grid_sampler(): expected {dims + 2}D input and grid with same number of dimensions, "
                           f"but got {sizes}")
    if x.shape[0] != grid.shape[0]:
        raise RuntimeError(f"grid_sampler(): expected grid and input to have same batch size, but got {sizes}")
    if grid.shape[-1] != dims:
        raise RuntimeError(f"grid_sampler(): expected grid to have size {dims} in last dimension, but got {sizes}")
    if 0 in x.shape[2:]:
        raise RuntimeError(f"grid_sampler(): expected input to have non-empty spatial dimensions, but got {sizes}")
    if mode not in (BILINEAR, NEAREST, BICUBIC) or padding not in (ZEROS, BORDER, REFLECTION):
        raise RuntimeError(f"grid_sampler(): interpolation_mode must be 0, 1 or 2 (bilinear, nearest, bicubic) and "
                           f"padding_mode 0, 1 or 2 (zeros, border, reflection), got {mode} and {padding}")
    if dims == 3 and mode == BICUBIC:
        raise RuntimeError("grid_sampler(): bicubic interpolation only supports 4D input")
    if grid.dtype != x.dtype:
        raise RuntimeError(f"expected scalar type {aten_dtype_name(x.dtype)} but found {aten_dtype_name(grid.dtype)}")
    check_kernel_dtype(f"grid_sampler_{dims}d", x.dtype, DTYPES, x.device)


def as_5d(x: torch.Tensor, grid: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D problems as 3-D ones with depth 1 (a view: the kernels take one layout)."""
    return (x, grid) if dims == 3 else (x.unsqueeze(2), grid.unsqueeze(1))


def blocks(channels: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P): all channels of a point in one tile up to 32, the rest of TILE in points."""
    block_c = min(next_power_of_2(max(channels, 1)), 32)
    return block_c, TILE // block_c


def forward_blocks(n_points: int, channels: int, cuda: bool) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_P, num_warps, channels per program) of the forward kernel. CUDA: a point per thread,
    channels split over programs until about CUDA_PROGRAMS of them; the interpreter pays per program and
    per statement: one program of TILE points walks all channels."""
    if not cuda:
        return 1, TILE, 8, channels
    block_p = 32 * CUDA_WARPS
    channel_blocks = cdiv(channels, CUDA_BLOCK_C)
    groups = min(channel_blocks, cdiv(CUDA_PROGRAMS, cdiv(n_points, block_p)))
    return CUDA_BLOCK_C, block_p, CUDA_WARPS, cdiv(channel_blocks, groups) * CUDA_BLOCK_C


_FORWARD = CachedLauncher(_forward_kernel)


def _sample(x: torch.Tensor, grid: torch.Tensor, mode: int, padding: int, align_corners: bool, dims: int,
            out: torch.Tensor | None) -> torch.Tensor:
    check_inputs(x, grid, mode, padding, dims)
    shape = (x.shape[0], x.shape[1], *grid.shape[1:-1])
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    else:
        check_same_dtype(x.dtype, out)
        resize_out(out, shape)
    if out.numel() == 0:
        return out
    x5, grid5 = as_5d(x, grid, dims)
    out5 = out if dims == 3 else out.unsqueeze(2)
    n_points, channels = grid5.shape[:4].numel(), x.shape[1]
    block_c, block_p, warps, per_program = forward_blocks(n_points, channels, x.device.type == "cuda")
    wide = max(sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))  # largest element offset
               for t in (x5, grid5, out5)) >= 2 ** 31 - TILE
    # Launched by key (launch_cache.py): the host time of Triton's argument inspection showed in the small core
    # shape's wall time on a slow host (1024x64: 23.2 us for 4.7 us of GPU time on one H100 machine).
    _FORWARD((x5.shape, x5.stride(), grid5.shape, grid5.stride(), out5.stride(), x.dtype, x.device, aligned(x5),
              aligned(grid5), aligned(out5), mode, padding, bool(align_corners), dims),
             (cdiv(n_points, block_p), cdiv(channels, per_program)),
             (x5, grid5, out5, n_points, channels, per_program, *x5.shape[2:], *grid5.shape[1:4], *x5.stride(),
              *grid5.stride(), *out5.stride()),
             {"MODE": mode, "PADDING": padding, "ALIGN": bool(align_corners), "IS_3D": dims == 3, "WIDE": wide,
              "BLOCK_C": block_c, "BLOCK_P": block_p}, num_warps=warps)
    return out


def grid_sampler_2d_triton(x: torch.Tensor, grid: torch.Tensor, interpolation_mode: int = BILINEAR,
                           padding_mode: int = ZEROS, align_corners: bool = False, *,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Sample x [N, C, H, W] at grid [N, H', W', 2] (x, y in [-1, 1]); returns [N, C, H', W']."""
    return _sample(x, grid, interpolation_mode, padding_mode, align_corners, 2, out)


def grid_sampler_3d_triton(x: torch.Tensor, grid: torch.Tensor, interpolation_mode: int = BILINEAR,
                           padding_mode: int = ZEROS, align_corners: bool = False, *,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Sample x [N, C, D, H, W] at grid [N, D', H', W', 3] (x, y, z); bilinear is trilinear here, no bicubic."""
    return _sample(x, grid, interpolation_mode, padding_mode, align_corners, 3, out)


def grid_sample_triton(x: torch.Tensor, grid: torch.Tensor, interpolation_mode: int = BILINEAR,
                       padding_mode: int = ZEROS, align_corners: bool = False) -> torch.Tensor:
    """grid_sampler_2d or _3d by the input's rank (4-D or 5-D)."""
    dims = 3 if x.dim() == 5 else 2
    return _sample(x, grid, interpolation_mode, padding_mode, align_corners, dims, None)


def grid_sample_reference(x: torch.Tensor, grid: torch.Tensor, interpolation_mode: int = BILINEAR,
                          padding_mode: int = ZEROS, align_corners: bool = False) -> torch.Tensor:
    """Grid sampling (torch's aten::grid_sampler_2d / grid_sampler_3d, by the input's rank)."""
    op = torch.ops.aten.grid_sampler_3d if x.dim() == 5 else torch.ops.aten.grid_sampler_2d
    return op(x, grid, interpolation_mode, padding_mode, align_corners)


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int | None = None) -> BenchCase:
    """Core shape at rows=4096, cols=128: bilinear, zeros, 8x32x128x128 sampled at 8x128x128 points."""
    x = bench_images(rows // 2, 32, cols, dtype, device, cuda_side=128)  # rows // 512 images
    grid = (torch.rand(x.shape[0], x.shape[2], x.shape[3], 2, device=device) * 2.2 - 1.1).to(dtype)
    return BenchCase((x, grid, BILINEAR, ZEROS, False), bytes_moved=(2 * x.numel() + grid.numel()) * x.element_size())


register_aten("aten::grid_sampler_2d", grid_sampler_2d_triton)
register_aten("aten::grid_sampler_2d.out", grid_sampler_2d_triton)
register_aten("aten::grid_sampler_3d", grid_sampler_3d_triton)
register_aten("aten::grid_sampler_3d.out", grid_sampler_3d_triton)
grid_sample = register("grid_sample", reference=grid_sample_reference, triton=grid_sample_triton,
                       bench_case=_bench_case)
