"""upsample_nearest2d (F.interpolate(mode="nearest") on [N, C, H, W]) and its backward: output_size and
scale forms (aten::upsample_nearest2d, .out, .vec_out, upsample_nearest2d_backward[.grad_input]; the .vec
form as upsample_nearest2d_vec).

Source index as ATen: src = min(floor(dst * scale), in - 1) in fp32, with scale = 1 / scale_factor when
a scale is given, else in / out; an unchanged size copies, and ATen's CPU kernels map a doubled size to
dst // 2, whatever the scale given. Forward: one program per BLOCK_R x BLOCK_C tile of output rows
(n, c, oh) and columns ow; source rows and columns are computed once per tile row / column. Memory
traffic: read n_in, write n_out; 16x64x128x128 -> 256x256 bf16 moves 168 MB, ~56 us at 3.0 TB/s.
Backward gathers instead of scattering (no atomics, deterministic): each grad_input element sums a window
of output rows/cols. ATen's CPU backward is the forward's adjoint: the window is every dst whose source
is i, found from i / scale and corrected by one step either way to agree exactly with the fp32 mapping.
ATen's CUDA backward instead takes dst [ceil(i * f), ceil((i + 1) * f)) with f = the scale factor (or
out / in) in fp32: where a given scale disagrees with the sizes, it skips (or double counts) output rows
the forward maps, so on CUDA we follow that.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.images import bench_images, output_memory_format
from flagstack.ops.challenge.pointwise import check_kernel_dtype, check_same_dtype, resize_out
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.registry import BenchCase, register, register_aten

FORWARD_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8)  # as ATen
BACKWARD_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TILE = 4096  # elements per program


@triton.jit
def _source(dst, scale, in_size):
    """ATen's nearest source index of dst (int) for an fp32 scale."""
    return tl.minimum(tl.floor(dst.to(tl.float32) * scale).to(tl.int32), in_size - 1)


@triton.jit
def _first_dst(i, scale, in_size, out_size):
    """The smallest dst whose source is >= i (out_size when i >= in_size)."""
    guess = tl.minimum(tl.maximum(tl.ceil(i.to(tl.float32) / scale).to(tl.int32), 0), out_size)
    guess = tl.where((guess > 0) & (_source(guess - 1, scale, in_size) >= i), guess - 1, guess)
    guess = tl.where((guess < out_size) & (_source(guess, scale, in_size) < i), guess + 1, guess)
    return tl.where(i >= in_size, out_size, guess)


@triton.jit
def _ceil_dst(i, factor, out_size):
    """ATen CUDA's backward map: the first dst of input index i is ceil(i * factor) in fp32, at most out_size."""
    return tl.minimum(tl.ceil(i.to(tl.float32) * factor), out_size).to(tl.int32)


@triton.jit
def _forward_kernel(x_ptr, out_ptr, n_rows, channels, in_h, in_w, out_h, out_w, scale_h, scale_w,
                    x_sn, x_sc, x_sh, x_sw, o_sn, o_sc, o_sh, o_sw,
                    K: tl.constexpr, ROWS_64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # Row indices (n, c, oh) in int32 unless there are 2^31 of them: 64-bit division is a long
    # emulated sequence, and each thread splits several rows into n, c, oh.
    rows = tl.program_id(0).to(tl.int64 if ROWS_64 else tl.int32) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # ow
    plane, oh = rows // out_h, (rows % out_h).to(tl.int32)
    n, c = plane // channels, plane % channels
    ih = _source(oh, scale_h, in_h).to(tl.int64)
    x_rows = x_ptr + (n.to(tl.int64) * x_sn + c.to(tl.int64) * x_sc + ih * x_sh)[:, None]
    mask = (rows < n_rows)[:, None] & (cols < out_w)[None, :]
    if K > 1:  # out_w = K * in_w, K a power of 2: source column ow // K, read as a contiguous run
        iw = tl.program_id(1) * (BLOCK_C // K) + tl.arange(0, BLOCK_C // K)
        run = tl.load(x_rows + (iw.to(tl.int64) * x_sw)[None, :], mask=(rows < n_rows)[:, None] & (iw < in_w)[None, :])
        values = tl.reshape(tl.broadcast_to(run[:, :, None], (BLOCK_R, BLOCK_C // K, K)), (BLOCK_R, BLOCK_C))
    else:  # a gather: neighbouring lanes may read one element, so no vector loads
        iw = _source(cols, scale_w, in_w)
        values = tl.load(x_rows + (iw.to(tl.int64) * x_sw)[None, :], mask=mask)
    tl.store(out_ptr + (n.to(tl.int64) * o_sn + c.to(tl.int64) * o_sc + oh.to(tl.int64) * o_sh)[:, None]
             + (cols.to(tl.int64) * o_sw)[None, :], values, mask=mask)


@triton.jit
def _backward_kernel(grad_ptr, out_ptr, n_rows, channels, in_h, in_w, out_h, out_w, scale_h, scale_w,
                     window_h, window_w, g_sn, g_sc, g_sh, g_sw, o_sn, o_sc, o_sh, o_sw,
                     CEIL_MAP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # (n, c, ih)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # iw
    plane, ih = rows // in_h, (rows % in_h).to(tl.int32)
    n, c = plane // channels, plane % channels
    if CEIL_MAP:  # ATen's CUDA backward; scale_h / scale_w are its factors (out per in)
        h_start, h_end = _ceil_dst(ih, scale_h, out_h), _ceil_dst(ih + 1, scale_h, out_h)
        w_start, w_end = _ceil_dst(cols, scale_w, out_w), _ceil_dst(cols + 1, scale_w, out_w)
    else:  # the forward's adjoint (ATen's CPU backward); scale_h / scale_w are the forward's (in per out)
        h_start, h_end = _first_dst(ih, scale_h, in_h, out_h), _first_dst(ih + 1, scale_h, in_h, out_h)
        w_start, w_end = _first_dst(cols, scale_w, in_w, out_w), _first_dst(cols + 1, scale_w, in_w, out_w)
    mask = (rows < n_rows)[:, None] & (cols < in_w)[None, :]
    plane_at = n * g_sn + c * g_sc
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for kh in range(0, window_h):  # window sizes are the largest over all rows / cols (host-computed)
        oh = h_start + kh
        row_at = (plane_at + oh.to(tl.int64) * g_sh)[:, None]
        for kw in range(0, window_w):
            ow = w_start + kw
            inside = mask & (oh < h_end)[:, None] & (ow < w_end)[None, :]
            acc += tl.load(grad_ptr + row_at + (ow.to(tl.int64) * g_sw)[None, :], mask=inside, other=0).to(tl.float32)
    tl.store(out_ptr + (n * o_sn + c * o_sc + ih.to(tl.int64) * o_sh)[:, None] + (cols.to(tl.int64) * o_sw)[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=mask)


def follows_cuda(device: torch.device) -> bool:
    """Whether to map indices as ATen's CUDA kernels (else as its CPU ones): they differ (see the top)."""
    return device.type == "cuda"


@functools.lru_cache(maxsize=256)
def _scale(in_size: int, out_size: int, scale: float | None, cuda: bool) -> float:
    """The forward's fp32 scale (src = floor(dst * scale)): 1 for an unchanged size and, on CPU, 1/2 for a
    doubled one (ATen copies / shifts those whatever the scale), else ATen's compute_scales_value:
    1 / scale when given and positive, else in / out."""
    if out_size == in_size:
        return 1.0
    if out_size == 2 * in_size and not cuda:
        return 0.5
    if scale is not None and scale > 0:
        return float(np.float32(1.0 / scale))
    return float(np.float32(in_size) / np.float32(out_size))


@functools.lru_cache(maxsize=256)
def _cuda_backward_factor(in_size: int, out_size: int, scale: float | None) -> float:
    """ATen CUDA's compute_scales_value_backwards in fp32: the scale itself when given and positive, else out / in."""
    if scale is not None and scale > 0:
        return float(np.float32(scale))
    return float(np.float32(out_size) / np.float32(in_size))


def _window(in_size: int, out_size: int, scale: float) -> int:
    """The most dst indices sharing one source index, with the kernel's exact fp32 mapping."""
    sources = np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * np.float32(scale)), in_size - 1)
    return int(np.bincount(sources.astype(np.int64), minlength=in_size).max())


def _ceil_window(in_size: int, out_size: int, factor: float) -> int:
    """The most dst indices one input index takes under ATen CUDA's backward map (see _ceil_dst)."""
    starts = np.minimum(np.ceil(np.arange(in_size + 1, dtype=np.float32) * np.float32(factor)), out_size)
    return int(np.diff(starts).max())


def _check_sizes(output_size, input_size) -> tuple[int, int, int, int, int, int]:
    """ATen's upsample_2d_common_check: returns N, C, H, W, OH, OW."""
    if len(output_size) != 2:
        raise RuntimeError(f"It is expected output_size equals to 2, but got size {len(output_size)}")
    if len(input_size) != 4:
        raise RuntimeError(f"It is expected input_size equals to 4, but got size {len(input_size)}")
    (n, c, h, w), (oh, ow) = (int(s) for s in input_size), (int(s) for s in output_size)
    if min(h, w, oh, ow) <= 0:
        raise RuntimeError(f"Input and output sizes should be greater than 0, but got input (H: {h}, W: {w}) "
                           f"output (H: {oh}, W: {ow})")
    return n, c, h, w, oh, ow


def _grid(n_rows: int, n_cols: int) -> tuple[tuple[int, int], int, int]:
    block_c = min(next_power_of_2(n_cols), 256)
    block_r = min(TILE // block_c, next_power_of_2(n_rows))
    return (cdiv(n_rows, block_r), cdiv(n_cols, block_c)), block_r, block_c


def _width_factor(in_w: int, out_w: int, scale_w: float, block_c: int) -> int:
    """K when out_w = K * in_w for a power of 2 K (2 <= K <= block_c) whose fp32 mapping is exactly
    ow // K (scale 1 / K, columns below 2^24), else 1 (the gather path)."""
    k = out_w // in_w
    exact = out_w == k * in_w and k & (k - 1) == 0 and scale_w == 1.0 / k and out_w < 2 ** 24
    return k if exact and 2 <= k <= block_c else 1


def upsample_nearest2d_triton(x: torch.Tensor, output_size, scales_h: float | None = None,
                              scales_w: float | None = None, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest-neighbour resize of [N, C, H, W] to output_size (scales_h/w, if given, set the mapping)."""
    n, c, h, w, oh, ow = _check_sizes(output_size, x.shape)
    if x.numel() == 0 and c * h * w == 0:
        raise RuntimeError(f"Non-empty 4D data tensor expected but got a tensor with sizes {list(x.shape)}")
    check_kernel_dtype("upsample_nearest2d", x.dtype, FORWARD_DTYPES, x.device)
    if out is None:
        out = torch.empty(n, c, oh, ow, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    else:
        check_same_dtype(x.dtype, out)
        resize_out(out, (n, c, oh, ow))
    if out.numel() == 0:
        return out
    grid, block_r, block_c = _grid(n * c * oh, ow)
    cuda = follows_cuda(x.device)
    scale_w = _scale(w, ow, scales_w, cuda)
    _forward_kernel[grid](x, out, n * c * oh, c, h, w, oh, ow, _scale(h, oh, scales_h, cuda), scale_w, *x.stride(),
                          *out.stride(), K=_width_factor(w, ow, scale_w, block_c), ROWS_64=n * c * oh >= 2 ** 31 - TILE,
                          BLOCK_R=block_r, BLOCK_C=block_c, num_warps=8)
    return out


def upsample_nearest2d_vec(x: torch.Tensor, output_size, scale_factors, *,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """The .vec form: exactly one of output_size or scale_factors (then out = floor(in * factor))."""
    if (output_size is None) == (scale_factors is None):
        raise RuntimeError("Must specify exactly one of output_size and scale_factors")
    if output_size is not None:
        return upsample_nearest2d_triton(x, output_size, out=out)
    if len(scale_factors) != 2:
        raise RuntimeError(f"Expected scale_factors to have 2 values (one per spatial dim), got {len(scale_factors)}")
    if x.dim() != 4:
        raise RuntimeError(f"It is expected input_size equals to 4, but got size {x.dim()}")
    size = [int(x.shape[2 + i] * float(f)) for i, f in enumerate(scale_factors)]
    return upsample_nearest2d_triton(x, size, *scale_factors, out=out)


def upsample_nearest2d_backward_triton(grad_output: torch.Tensor, output_size, input_size,
                                       scales_h: float | None = None, scales_w: float | None = None, *,
                                       grad_input: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient wrt the input: each input pixel sums the grads of the output pixels copied from it."""
    n, c, h, w, oh, ow = _check_sizes(output_size, input_size)
    if grad_output.dim() != 4:
        raise RuntimeError(f"Expected grad_output to be a tensor of dimension 4 but got: dimension {grad_output.dim()}")
    for i, size in enumerate((n, c, oh, ow)):
        if grad_output.shape[i] != size:
            raise RuntimeError(f"Expected grad_output to have the same shape as output; output.size({i}) = {size} "
                               f"but got grad_output.size({i}) = {grad_output.shape[i]}")
    check_kernel_dtype("upsample_nearest2d_backward", grad_output.dtype, BACKWARD_DTYPES, grad_output.device)
    if grad_input is None:
        grad_input = torch.empty(n, c, h, w, dtype=grad_output.dtype, device=grad_output.device,
                                 memory_format=output_memory_format(grad_output))
    else:
        check_same_dtype(grad_output.dtype, grad_input)
        resize_out(grad_input, (n, c, h, w))
    if grad_input.numel() == 0:
        return grad_input
    cuda = follows_cuda(grad_output.device)
    if cuda:  # ATen's CUDA map; unchanged sizes are a copy there (factor 1)
        same = (h, w) == (oh, ow)
        scale_h, scale_w = (1.0, 1.0) if same else (_cuda_backward_factor(h, oh, scales_h),
                                                    _cuda_backward_factor(w, ow, scales_w))
        windows = _ceil_window(h, oh, scale_h), _ceil_window(w, ow, scale_w)
    else:
        scale_h, scale_w = _scale(h, oh, scales_h, False), _scale(w, ow, scales_w, False)
        windows = _window(h, oh, scale_h), _window(w, ow, scale_w)
    grid, block_r, block_c = _grid(n * c * h, w)
    _backward_kernel[grid](grad_output, grad_input, n * c * h, c, h, w, oh, ow, scale_h, scale_w, *windows,
                           *grad_output.stride(), *grad_input.stride(), CEIL_MAP=cuda, BLOCK_R=block_r,
                           BLOCK_C=block_c, num_warps=8)
    return grad_input


def upsample_nearest2d_reference(x: torch.Tensor, output_size, scales_h: float | None = None,
                                 scales_w: float | None = None, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest-neighbour upsampling (torch's aten::upsample_nearest2d)."""
    if out is None:
        return torch.ops.aten.upsample_nearest2d(x, output_size, scales_h, scales_w)
    return torch.ops.aten.upsample_nearest2d.out(x, output_size, scales_h, scales_w, out=out)


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int | None = None) -> BenchCase:
    """Core shape at rows=4096, cols=128: 16x64x128x128 -> 256x256."""
    x = bench_images(rows, 64, cols, dtype, device, cuda_side=128)
    size = [2 * x.shape[2], 2 * x.shape[3]]
    return BenchCase((x, size), bytes_moved=5 * x.numel() * x.element_size())


register_aten("aten::upsample_nearest2d", upsample_nearest2d_triton)
register_aten("aten::upsample_nearest2d.out", upsample_nearest2d_triton)
# Not aten::upsample_nearest2d.vec: ATen defines it as a composite that calls the overload above, and
# overriding a composite replaces its autograd (enable() installs those at the Autograd key).
register_aten("aten::upsample_nearest2d.vec_out", upsample_nearest2d_vec)
register_aten("aten::upsample_nearest2d_backward", upsample_nearest2d_backward_triton)
register_aten("aten::upsample_nearest2d_backward.grad_input", upsample_nearest2d_backward_triton)
upsample_nearest2d = register("upsample_nearest2d", reference=upsample_nearest2d_reference,
                              triton=upsample_nearest2d_triton, flaggems="ops.upsample_nearest2d",
                              bench_case=_bench_case)
