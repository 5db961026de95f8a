"""max_pool3d with indices and its backward (F.max_pool3d, aten::max_pool3d_with_indices[.out],
max_pool3d_with_indices_backward[.grad_input]): kernel, stride, padding, dilation, ceil_mode; 4-D or
5-D input; integer and float dtypes forward on CPU, floats only on CUDA (as ATen: a drop-in must not
accept there what ATen rejects), floats backward. As ATen: the index is the flat
T*H*W position within the channel; a NaN wins (the last one in the window), and a window of -inf
(or the dtype's lowest) points at its first element.

Forward: one program per BLOCK outputs walks the KT*KH*KW window (constexpr, unrolled); neighbouring
outputs share input rows, so the core shape k3 s2 p1 8x32x32x64x64 bf16 reads its 33.5 MB input
about once from DRAM (the rest hits L1/L2) and writes 8.4 MB of values + 33.5 MB of int64 indices
(~25 us at 3.0 TB/s). Backward: each output adds its gradient at its index with an fp32 atomic
(windows overlap when stride < kernel), then fp16/bf16 gradients are rounded once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import check_kernel_dtype, check_same_dtype, resize_out
from flagstack.ops.challenge.pool3d import block_offsets, check_pool3d, needs_int64, split_volume, triple
from flagstack.ops.host import cdiv
from flagstack.ops.launch_cache import launcher
from flagstack.ops.registry import BenchCase, register, register_aten

GRAD_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CPU_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, *GRAD_DTYPES)
CUDA_DTYPES = GRAD_DTYPES  # ATen's CUDA kernel dispatches floating types only
BLOCK = 512
ERRORS = {"kernel_size": "max_pool3d: kernel_size must either be a single int, or a tuple of three ints",
          "stride": "max_pool3d: stride must either be omitted, a single int, or a tuple of three ints",
          "padding": "max_pool3d: padding must either be a single int, or a tuple of three ints",
          "dilation": "max_pool3d: dilation must be either a single int, or a tuple of three ints"}


@triton.jit
def _first_valid(start, dilation: tl.constexpr):
    """The first start + k * dilation (k >= 0) that is not in the left padding."""
    return tl.where(start < 0, start + (-start + dilation - 1) // dilation * dilation, start)


@triton.jit
def _max_pool_kernel(x_ptr, out_ptr, index_ptr, n, T, H, W, OT, OH, OW, lowest,
                     KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr,
                     SW: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, DT: tl.constexpr,
                     DH: tl.constexpr, DW: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    offsets, mask = block_offsets(n, BLOCK, WIDE)
    base, ot, oh, ow = split_volume(offsets, OT, OH, OW, T * H * W)
    t0, h0, w0 = ot * ST - PT, oh * SH - PH, ow * SW - PW
    best_index = (_first_valid(t0, DT) * H + _first_valid(h0, DH)) * W + _first_valid(w0, DW)
    if x_ptr.dtype.element_ty.is_fp16() or x_ptr.dtype.element_ty.is_bf16():  # compared in fp32: exact
        best = tl.full([BLOCK], lowest, tl.float32)
    else:
        best = tl.full([BLOCK], lowest, x_ptr.dtype.element_ty)
    for kt in tl.static_range(KT):
        t = t0 + kt * DT
        for kh in tl.static_range(KH):
            h = h0 + kh * DH
            row_ok = mask & (t >= 0) & (t < T) & (h >= 0) & (h < H)
            for kw in tl.static_range(KW):
                w = w0 + kw * DW
                valid = row_ok & (w >= 0) & (w < W)
                position = (t * H + h) * W + w
                value = tl.load(x_ptr + base + position, mask=valid, other=lowest).to(best.dtype)
                take = valid & ((value > best) | (value != value))  # NaN != NaN: a NaN always takes over
                best = tl.where(take, value, best)
                best_index = tl.where(take, position, best_index)
    tl.store(out_ptr + offsets, best.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(index_ptr + offsets, best_index.to(tl.int64), mask=mask)


@triton.jit
def _max_pool_backward_kernel(grad_ptr, index_ptr, grad_input_ptr, n, out_volume, in_volume, WIDE: tl.constexpr,
                              BLOCK: tl.constexpr):
    offsets, mask = block_offsets(n, BLOCK, WIDE)
    grad = tl.load(grad_ptr + offsets, mask=mask).to(grad_input_ptr.dtype.element_ty)
    target = offsets // out_volume * in_volume + tl.load(index_ptr + offsets, mask=mask, other=0)
    tl.atomic_add(grad_input_ptr + target, grad, mask=mask, sem="relaxed")


def _params(kernel_size, stride, padding, dilation):
    kernel = triple(kernel_size, ERRORS["kernel_size"])
    stride = triple(stride, ERRORS["stride"], omittable=True)
    return (kernel, stride or kernel, triple(padding, ERRORS["padding"]), triple(dilation, ERRORS["dilation"]))


def _lowest(dtype: torch.dtype) -> float | int:
    return float("-inf") if dtype.is_floating_point else torch.iinfo(dtype).min


def max_pool3d_with_indices_triton(x: torch.Tensor, kernel_size, stride=(), padding=0, dilation=1,
                                   ceil_mode: bool = False, *, out: torch.Tensor | None = None,
                                   indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over each 3-D window of a (N, )C x T x H x W input, with the flat T*H*W index of the max."""
    kernel, stride, padding, dilation = _params(kernel_size, stride, padding, dilation)
    if x.is_cuda and x.dim() < 4:  # ATen's CUDA template reads input.size(-4) before its rank check
        raise IndexError(f"Dimension out of range (expected to be in range of [-{x.dim()}, {x.dim() - 1}], "
                         "but got -4)")
    out_thw = check_pool3d(x, kernel, stride, padding, dilation, ceil_mode, "max_pool3d_with_indices_out_cuda_template")
    check_kernel_dtype("max_pool3d_with_indices_out_frame", x.dtype, CUDA_DTYPES if x.is_cuda else CPU_DTYPES,
                       x.device)
    shape = (*x.shape[:-3], *out_thw)
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
        indices = torch.empty(shape, dtype=torch.int64, device=x.device)
    else:
        check_same_dtype(x.dtype, out)
        check_same_dtype(torch.int64, indices)
        resize_out(out, shape)
        resize_out(indices, shape)
    n = out.numel()
    if n == 0:
        return out, indices
    values = out if out.is_contiguous() else torch.empty(shape, dtype=x.dtype, device=x.device)
    where = indices if indices.is_contiguous() else torch.empty(shape, dtype=torch.int64, device=x.device)
    (kt, kh, kw), (st, sh, sw), (pt, ph, pw), (dt, dh, dw) = kernel, stride, padding, dilation
    # launched by key (launch_cache.py): on a slow host Triton's binding outlasts a small pool's GPU time
    launcher(_max_pool_kernel)(
        None, (cdiv(n, BLOCK),), (x.contiguous(), values, where, n, *x.shape[-3:], *out_thw, _lowest(x.dtype)),
        {"KT": kt, "KH": kh, "KW": kw, "ST": st, "SH": sh, "SW": sw, "PT": pt, "PH": ph, "PW": pw, "DT": dt,
         "DH": dh, "DW": dw, "WIDE": needs_int64(x, out), "BLOCK": BLOCK}, num_warps=4)
    for result, target in ((values, out), (where, indices)):
        if result is not target:
            target.copy_(result)
    return out, indices


def max_pool3d_with_indices_backward_triton(grad_output: torch.Tensor, x: torch.Tensor, kernel_size, stride,
                                            padding, dilation, ceil_mode: bool, indices: torch.Tensor, *,
                                            grad_input: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient wrt x: each output's gradient added at the position of its max."""
    kernel, stride, padding, dilation = _params(kernel_size, stride, padding, dilation)
    out_thw = check_pool3d(x, kernel, stride, padding, dilation, ceil_mode, "max_pool3d_with_indices_backward")
    check_kernel_dtype("max_pool3d_with_indices_backward_out_frame", x.dtype, GRAD_DTYPES, x.device)
    expected = (*x.shape[:-3], *out_thw)
    if tuple(grad_output.shape) != expected or tuple(indices.shape) != expected:
        raise RuntimeError(f"Expected grad_output and indices of shape {list(expected)}, got "
                           f"{list(grad_output.shape)} and {list(indices.shape)}")
    if grad_input is None:
        grad_input = torch.empty_like(x, memory_format=torch.contiguous_format)
    else:
        check_same_dtype(x.dtype, grad_input)
        resize_out(grad_input, x.shape)
    wide = x.dtype in (torch.float32, torch.float64) and grad_input.is_contiguous()
    acc = grad_input.zero_() if wide else torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    n = grad_output.numel()
    if n:
        _max_pool_backward_kernel[(cdiv(n, BLOCK),)](grad_output.contiguous(), indices.contiguous(), acc, n,
                                                            out_thw[0] * out_thw[1] * out_thw[2],
                                                            x.shape[-3:].numel(), WIDE=needs_int64(x, grad_output),
                                                            BLOCK=BLOCK, num_warps=4)
    if acc is not grad_input:
        grad_input.copy_(acc)
    return grad_input


def max_pool3d_reference(x: torch.Tensor, kernel_size, stride=(), padding=0, dilation=1, ceil_mode: bool = False):
    """aten::max_pool3d_with_indices: (values, indices)."""
    return torch.ops.aten.max_pool3d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int = 64) -> BenchCase:
    """k3 s2 p1 over rows // 512 x 32 x 32 x cols x cols (the DESIGN.md core shape at 4096, 64)."""
    side = cols if device.startswith("cuda") else 8
    x = torch.randn(max(rows // 512, 1), 32, 32, side, side, device=device).to(dtype)
    outputs = x.numel() // 8
    return BenchCase((x, [3], [2], [1]), bytes_moved=x.numel() * x.element_size() + outputs * (x.element_size() + 8))


register_aten("aten::max_pool3d_with_indices", max_pool3d_with_indices_triton)
register_aten("aten::max_pool3d_with_indices.out", max_pool3d_with_indices_triton)
register_aten("aten::max_pool3d_with_indices_backward", max_pool3d_with_indices_backward_triton)
register_aten("aten::max_pool3d_with_indices_backward.grad_input", max_pool3d_with_indices_backward_triton)
max_pool3d = register("max_pool3d", reference=max_pool3d_reference, triton=max_pool3d_with_indices_triton,
                      flaggems="ops.max_pool3d_with_indices", bench_case=_bench_case)
