"""Backward of grid_sample: gradients of the input and of the grid (aten::grid_sampler_2d_backward,
grid_sampler_3d_backward and their .out forms), with the forward's coordinate helpers.

One program per BLOCK_P output points, looping over channel chunks as the forward does. For every tap:
- grad input: atomic add of weight * grad_output into an fp32 (fp64 for fp64) buffer, cast to the
  input's dtype at the end (fp16/bf16 atomics would round each addition);
- grad grid: sum over channels of input * grad_output at the tap, times the derivative of the tap's
  weight along each axis; the sums are scaled by d(coordinate)/d(grid) (unnormalize, clip, reflect) at
  the end. Nearest has zero grid gradient (its taps do not move with the grid), as ATen.
Memory traffic: read grad_output, input (taps) and grid once; grad_input is read-modify-written by
atomics in L2 plus one cast pass for fp16/bf16; 8x32x128x128 fp32 moves ~51 MB, ~17 us at 3.0 TB/s.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.grid_sample import (as_5d, axis_start, axis_tap, blocks, check_inputs, cubic_distance,
                                                 divide, reflect, split_points, unnormalize)
from flagstack.ops.challenge.pointwise import aten_dtype_name, check_same_dtype, resize_out, to_compute_dtype
from flagstack.ops.host import cdiv
from flagstack.ops.registry import register_aten


@triton.jit
def coord_slope(g, size, MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN: tl.constexpr):
    """d(source coordinate) / d(grid value) along one axis (ATen's *_set_grad helpers)."""
    scale = (size - 1) * 0.5 if ALIGN else size * 0.5
    coord = unnormalize(g, size, ALIGN)
    slope = tl.full(g.shape, 1.0, g.dtype) * scale
    if MODE == 2 or PADDING == 0:  # bicubic pads taps, not the point: only the unnormalize scale
        return slope
    if PADDING == 2:
        twice_low = 0.0 if ALIGN else -1.0
        twice_high = 2.0 * (size - 1) if ALIGN else 2.0 * size - 1
        low, span = twice_low * 0.5, (twice_high - twice_low) * 0.5
        flips = tl.floor(divide(tl.abs(coord - low), span))
        mirrored = (flips % 2.0 != 0.0) != (coord < low)  # an odd number of mirrors turns the slope over
        slope = tl.where(span > 0, tl.where(mirrored, -slope, slope), 0.0)
        coord = reflect(coord, twice_low, twice_high)
    return tl.where((coord <= 0) | (coord >= size - 1.0), 0.0, slope)  # clipped: flat


@triton.jit
def cubic_slope(t, K: tl.constexpr):
    """d(weight of cubic tap K) / dt (see cubic_weight)."""
    A: tl.constexpr = -0.75
    d = cubic_distance(t, K)
    if K == 1 or K == 2:
        slope = (3.0 * (A + 2.0) * d - 2.0 * (A + 3.0)) * d
    else:
        slope = (3.0 * A * d - 10.0 * A) * d + 8.0 * A
    return slope if K <= 1 else -slope  # d = 1 - t, 2 - t run against t


@triton.jit
def tap_slope(coord, start, K: tl.constexpr, MODE: tl.constexpr):
    """d(weight of tap K) / d(coordinate) along one axis (bilinear or bicubic)."""
    if MODE == 2:
        return cubic_slope(coord - start, K)
    return tl.full(coord.shape, -1.0 if K == 0 else 1.0, coord.dtype)


@triton.jit
def _backward_kernel(grad_ptr, x_ptr, grid_ptr, grad_x_ptr, grad_grid_ptr, n_points, channels,
                     in_d, in_h, in_w, out_d, out_h, out_w,
                     go_sn, go_sc, go_sd, go_sh, go_sw, x_sn, x_sc, x_sd, x_sh, x_sw,
                     g_sn, g_sd, g_sh, g_sw, g_sk, gx_sn, gx_sc, gx_sd, gx_sh, gx_sw, gg_sn, gg_sd, gg_sh, gg_sw,
                     MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN: tl.constexpr, IS_3D: tl.constexpr,
                     INPUT_GRAD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pos = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    live = pos < n_points
    n, od, oh, ow = split_points(pos, out_d, out_h, out_w)
    g_at = grid_ptr + n * g_sn + od * g_sd + oh * g_sh + ow * g_sw
    gx = to_compute_dtype(tl.load(g_at, mask=live, other=0))
    gy = to_compute_dtype(tl.load(g_at + g_sk, mask=live, other=0))
    x, x0 = axis_start(gx, in_w, MODE, PADDING, ALIGN)
    y, y0 = axis_start(gy, in_h, MODE, PADDING, ALIGN)
    if IS_3D:
        gz = to_compute_dtype(tl.load(g_at + 2 * g_sk, mask=live, other=0))
        z, z0 = axis_start(gz, in_d, MODE, PADDING, ALIGN)
    TAPS: tl.constexpr = 1 if MODE == 1 else (4 if MODE == 2 else 2)
    TAPS_Z: tl.constexpr = TAPS if IS_3D else 1
    GRID_GRAD: tl.constexpr = MODE != 1
    go_at = (n * go_sn + od * go_sd + oh * go_sh + ow * go_sw)[None, :]
    grad_gx = tl.zeros([BLOCK_P], gx.dtype)
    grad_gy = tl.zeros([BLOCK_P], gx.dtype)
    grad_gz = tl.zeros([BLOCK_P], gx.dtype)
    for c_start in range(0, channels, BLOCK_C):
        c = (c_start + tl.arange(0, BLOCK_C)).to(tl.int64)
        c_live = (c < channels)[:, None]
        go = to_compute_dtype(tl.load(grad_ptr + go_at + (c * go_sc)[:, None], mask=c_live & live[None, :], other=0))
        x_base = (n * x_sn)[None, :] + (c * x_sc)[:, None]
        gx_base = (n * gx_sn)[None, :] + (c * gx_sc)[:, None]
        for kz in tl.static_range(TAPS_Z):
            if IS_3D:
                iz, z_in, wz = axis_tap(z, z0, in_d, kz, MODE, PADDING, ALIGN)
            for ky in tl.static_range(TAPS):
                iy, y_in, wy = axis_tap(y, y0, in_h, ky, MODE, PADDING, ALIGN)
                for kx in tl.static_range(TAPS):
                    ix, x_in, wx = axis_tap(x, x0, in_w, kx, MODE, PADDING, ALIGN)
                    at, grad_at = iy * x_sh + ix * x_sw, iy * gx_sh + ix * gx_sw
                    inside = live & y_in & x_in
                    weight = wx * wy
                    if IS_3D:
                        at += iz * x_sd
                        grad_at += iz * gx_sd
                        inside = inside & z_in
                        weight = weight * wz
                    tile_in = c_live & inside[None, :]
                    if INPUT_GRAD:
                        tl.atomic_add(grad_x_ptr + gx_base + grad_at[None, :], go * weight[None, :], mask=tile_in)
                    if GRID_GRAD:
                        values = to_compute_dtype(tl.load(x_ptr + x_base + at[None, :], mask=tile_in, other=0))
                        dot = tl.sum(values * go, axis=0)  # over channels: the tap's weight is theirs in common
                        slope_x, slope_y = tap_slope(x, x0, kx, MODE), tap_slope(y, y0, ky, MODE)
                        if IS_3D:
                            grad_gx += dot * slope_x * wy * wz
                            grad_gy += dot * wx * slope_y * wz
                            grad_gz += dot * wx * wy * tap_slope(z, z0, kz, MODE)
                        else:
                            grad_gx += dot * slope_x * wy
                            grad_gy += dot * wx * slope_y
    if GRID_GRAD:
        grad_gx *= coord_slope(gx, in_w, MODE, PADDING, ALIGN)
        grad_gy *= coord_slope(gy, in_h, MODE, PADDING, ALIGN)
    out_at = grad_grid_ptr + n * gg_sn + od * gg_sd + oh * gg_sh + ow * gg_sw
    kind = grad_grid_ptr.dtype.element_ty
    tl.store(out_at, grad_gx.to(kind), mask=live)
    tl.store(out_at + 1, grad_gy.to(kind), mask=live)
    if IS_3D:
        if GRID_GRAD:
            grad_gz *= coord_slope(gz, in_d, MODE, PADDING, ALIGN)
        tl.store(out_at + 2, grad_gz.to(kind), mask=live)


def _backward(grad_output: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, mode: int, padding: int,
              align_corners: bool, output_mask, dims: int, out0: torch.Tensor | None = None,
              out1: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    check_inputs(x, grid, mode, padding, dims)
    out_shape = (x.shape[0], x.shape[1], *grid.shape[1:-1])
    if tuple(grad_output.shape) != out_shape:
        raise RuntimeError(f"grid_sampler backward: expected grad_output of shape {list(out_shape)}, "
                           f"got {list(grad_output.shape)}")
    if grad_output.dtype != x.dtype or grad_output.device != x.device:
        raise RuntimeError(f"expected scalar type {aten_dtype_name(x.dtype)} on {x.device} for grad_output, but "
                           f"found {aten_dtype_name(grad_output.dtype)} on {grad_output.device}")
    input_grad = bool(output_mask[0])
    # fp16/bf16 gradients add up in fp32; fp32 and fp64 in their own dtype (written in place when possible)
    acc_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    grad_x = torch.zeros(x.shape, dtype=acc_dtype, device=x.device) if input_grad else None
    if out1 is None:
        grad_grid = torch.empty(grid.shape, dtype=grid.dtype, device=grid.device)
    else:
        check_same_dtype(grid.dtype, out1)
        grad_grid = resize_out(out1, grid.shape)
    x5, grid5 = as_5d(x, grid, dims)
    n_points = grid5.shape[:4].numel()
    if n_points > 0:
        # grad_grid is written through a contiguous view, copied into a strided out1 after
        target = grad_grid if grad_grid.is_contiguous() else torch.empty(grid.shape, dtype=grid.dtype, device=x.device)
        go5, target5 = (grad_output, target) if dims == 3 else (grad_output.unsqueeze(2), target.unsqueeze(1))
        grad_x5 = x5.new_empty(0, dtype=acc_dtype) if grad_x is None else (grad_x if dims == 3 else grad_x.unsqueeze(2))
        block_c, block_p = blocks(x.shape[1])
        _backward_kernel[(cdiv(n_points, block_p),)](
            go5, x5, grid5, grad_x5, target5, n_points, x.shape[1], *x5.shape[2:], *grid5.shape[1:4],
            *go5.stride(), *x5.stride(), *grid5.stride(), *(grad_x5.stride() if grad_x is not None else (0,) * 5),
            *target5.stride()[:4], MODE=mode, PADDING=padding, ALIGN=bool(align_corners), IS_3D=dims == 3,
            INPUT_GRAD=input_grad, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=8)
        if target is not grad_grid:
            grad_grid.copy_(target)
    if grad_x is not None and out0 is not None:
        check_same_dtype(x.dtype, out0)
        grad_x = resize_out(out0, x.shape).copy_(grad_x)
    elif grad_x is not None and grad_x.dtype != x.dtype:
        grad_x = grad_x.to(x.dtype)
    return grad_x, grad_grid


def grid_sampler_2d_backward_triton(grad_output: torch.Tensor, x: torch.Tensor, grid: torch.Tensor,
                                    interpolation_mode: int, padding_mode: int, align_corners: bool,
                                    output_mask=(True, True), *, out0: torch.Tensor | None = None,
                                    out1: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(grad of x, grad of grid) of grid_sampler_2d; grad of x is None when output_mask[0] is False."""
    return _backward(grad_output, x, grid, interpolation_mode, padding_mode, align_corners, output_mask, 2,
                     out0, out1)


def grid_sampler_3d_backward_triton(grad_output: torch.Tensor, x: torch.Tensor, grid: torch.Tensor,
                                    interpolation_mode: int, padding_mode: int, align_corners: bool,
                                    output_mask=(True, True), *, out0: torch.Tensor | None = None,
                                    out1: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(grad of x, grad of grid) of grid_sampler_3d; grad of x is None when output_mask[0] is False."""
    return _backward(grad_output, x, grid, interpolation_mode, padding_mode, align_corners, output_mask, 3,
                     out0, out1)


register_aten("aten::grid_sampler_2d_backward", grid_sampler_2d_backward_triton)
register_aten("aten::grid_sampler_2d_backward.out", grid_sampler_2d_backward_triton)
register_aten("aten::grid_sampler_3d_backward", grid_sampler_3d_backward_triton)
register_aten("aten::grid_sampler_3d_backward.out", grid_sampler_3d_backward_triton)
