"""avg_pool3d and its backward (F.avg_pool3d, aten::avg_pool3d[.out], avg_pool3d_backward[.grad_input]):
kernel, stride, padding, ceil_mode, count_include_pad, divisor_override; 4-D or 5-D float input (as
ATen's CUDA kernel: its CPU kernel also takes int64).

The divisor follows ATen: divisor_override if given; else the window clipped to the padded input
(count_include_pad) or to the input itself. Forward: one program per BLOCK outputs sums the unrolled
KT*KH*KW window in fp32; the core shape k3 s2 p1 8x32x32x64x64 bf16 reads 33.5 MB (neighbouring
windows overlap in L1/L2) and writes 8.4 MB (~14 us at 3.0 TB/s). Backward gathers instead of
scattering: each input element adds grad / divisor of the outputs whose window holds it (no atomics,
deterministic), reading grad_output ~KT*KH*KW / (ST*SH*SW) times from cache.
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

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BLOCK = 512  # outputs per program in the forward
BACKWARD_BLOCK = 1024  # inputs per program in the backward
ERRORS = {"kernel_size": "avg_pool3d: kernel_size must be a single int, or a tuple of three ints",
          "stride": "avg_pool3d: stride must be omitted, a single int, or a tuple of three ints",
          "padding": "avg_pool3d: padding must be a single int, or a tuple of three ints"}


@triton.jit
def _window_count(o, size, stride: tl.constexpr, pad: tl.constexpr, K: tl.constexpr, COUNT_PAD: tl.constexpr):
    """Along one dim, ATen's count for output o: its window clipped to the padded input
    (count_include_pad) or to the input; the divisor is the product over the three dims."""
    start = o * stride - pad
    end = tl.minimum(start + K, size + pad)
    if not COUNT_PAD:
        start, end = tl.maximum(start, 0), tl.minimum(end, size)
    return end - start


@triton.jit
def _avg_pool_kernel(x_ptr, out_ptr, n, T, H, W, OT, OH, OW, divisor_override,
                     KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ST: tl.constexpr, SH: tl.constexpr,
                     SW: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                     COUNT_PAD: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    offsets, mask = block_offsets(n, BLOCK, WIDE)
    base, ot, oh, ow = split_volume(offsets, OT, OH, OW, T * H * W)
    t0, h0, w0 = ot * ST - PT, oh * SH - PH, ow * SW - PW
    acc = tl.zeros([BLOCK], tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32)
    for kt in tl.static_range(KT):
        t = t0 + kt
        for kh in tl.static_range(KH):
            h = h0 + kh
            row_ok = mask & (t >= 0) & (t < T) & (h >= 0) & (h < H)
            for kw in tl.static_range(KW):
                w = w0 + kw
                valid = row_ok & (w >= 0) & (w < W)
                acc += tl.load(x_ptr + base + (t * H + h) * W + w, mask=valid, other=0.0).to(acc.dtype)
    count = (_window_count(ot, T, ST, PT, KT, COUNT_PAD) * _window_count(oh, H, SH, PH, KH, COUNT_PAD)
             * _window_count(ow, W, SW, PW, KW, COUNT_PAD))
    divisor = tl.where(divisor_override > 0, divisor_override, count)
    tl.store(out_ptr + offsets, (acc / divisor.to(acc.dtype)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _avg_pool_backward_kernel(grad_ptr, grad_input_ptr, n, T, H, W, OT, OH, OW, divisor_override,
                              KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ST: tl.constexpr,
                              SH: tl.constexpr, SW: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr,
                              PW: tl.constexpr, COUNT_PAD: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    offsets, mask = block_offsets(n, BLOCK, WIDE)
    base, t, h, w = split_volume(offsets, T, H, W, OT * OH * OW)
    acc = tl.zeros([BLOCK], tl.float64 if grad_input_ptr.dtype.element_ty == tl.float64 else tl.float32)
    # Output o's window holds input i when o * S - P + k = i for some 0 <= k < K; the per-dim parts
    # of the validity and of the divisor are computed at their loop level.
    for kt in tl.static_range(KT):
        st = t + PT - kt
        ot = st // ST
        t_ok = mask & (st >= 0) & (st % ST == 0) & (ot < OT)
        t_count = _window_count(ot, T, ST, PT, KT, COUNT_PAD)
        for kh in tl.static_range(KH):
            sh = h + PH - kh
            oh = sh // SH
            th_ok = t_ok & (sh >= 0) & (sh % SH == 0) & (oh < OH)
            th_count = t_count * _window_count(oh, H, SH, PH, KH, COUNT_PAD)
            for kw in tl.static_range(KW):
                sw = w + PW - kw
                ow = sw // SW
                valid = th_ok & (sw >= 0) & (sw % SW == 0) & (ow < OW)
                grad = tl.load(grad_ptr + base + (ot * OH + oh) * OW + ow, mask=valid, other=0.0).to(acc.dtype)
                count = th_count * _window_count(ow, W, SW, PW, KW, COUNT_PAD)
                divisor = tl.where(divisor_override > 0, divisor_override, tl.where(valid, count, 1))
                acc += grad / divisor.to(acc.dtype)
    tl.store(grad_input_ptr + offsets, acc.to(grad_input_ptr.dtype.element_ty), mask=mask)


def _params(kernel_size, stride, padding, divisor_override):
    kernel = triple(kernel_size, ERRORS["kernel_size"])
    stride = triple(stride, ERRORS["stride"], omittable=True) or kernel
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    return kernel, stride, triple(padding, ERRORS["padding"]), int(divisor_override or 0)


def _check(x, kernel, stride, padding, ceil_mode, op):
    out_thw = check_pool3d(x, kernel, stride, padding, (1, 1, 1), ceil_mode, op)
    if any(s + 2 * p < k for s, k, p in zip(x.shape[-3:], kernel, padding)):  # ATen checks this one apart
        raise RuntimeError(f"input image (T: {x.shape[-3]} H: {x.shape[-2]} W: {x.shape[-1]}) smaller than kernel "
                           f"size (kT: {kernel[0]} kH: {kernel[1]} kW: {kernel[2]})")
    check_kernel_dtype("avg_pool3d_out_frame", x.dtype, DTYPES, x.device)
    return out_thw


def avg_pool3d_triton(x: torch.Tensor, kernel_size, stride=(), padding=0, ceil_mode: bool = False,
                      count_include_pad: bool = True, divisor_override: int | None = None, *,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over each 3-D window of a (N, )C x T x H x W input."""
    kernel, stride, padding, divisor = _params(kernel_size, stride, padding, divisor_override)
    out_thw = _check(x, kernel, stride, padding, ceil_mode, "avg_pool3d")
    shape = (*x.shape[:-3], *out_thw)
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    else:
        check_same_dtype(x.dtype, out)
        resize_out(out, shape)
    n = out.numel()
    if n == 0:
        return out
    target = out if out.is_contiguous() else torch.empty(shape, dtype=x.dtype, device=x.device)
    (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = kernel, stride, padding
    # launched by key (launch_cache.py): on a slow host Triton's binding outlasts a small pool's GPU time
    launcher(_avg_pool_kernel)(
        None, (cdiv(n, BLOCK),), (x.contiguous(), target, n, *x.shape[-3:], *out_thw, divisor),
        {"KT": kt, "KH": kh, "KW": kw, "ST": st, "SH": sh, "SW": sw, "PT": pt, "PH": ph, "PW": pw,
         "COUNT_PAD": count_include_pad, "WIDE": needs_int64(x, out), "BLOCK": BLOCK}, num_warps=4)
    if target is not out:
        out.copy_(target)
    return out


def avg_pool3d_backward_triton(grad_output: torch.Tensor, x: torch.Tensor, kernel_size, stride, padding,
                               ceil_mode: bool, count_include_pad: bool, divisor_override: int | None, *,
                               grad_input: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient wrt x: each input gathers grad / divisor from every window that holds it."""
    kernel, stride, padding, divisor = _params(kernel_size, stride, padding, divisor_override)
    out_thw = _check(x, kernel, stride, padding, ceil_mode, "avg_pool3d_backward")
    expected = (*x.shape[:-3], *out_thw)
    if tuple(grad_output.shape) != expected:
        raise RuntimeError(f"Expected grad_output of shape {list(expected)}, got {list(grad_output.shape)}")
    if grad_input is None:
        grad_input = torch.empty_like(x, memory_format=torch.contiguous_format)
    else:
        check_same_dtype(x.dtype, grad_input)
        resize_out(grad_input, x.shape)
    n = x.numel()
    if n == 0:
        return grad_input
    target = grad_input if grad_input.is_contiguous() else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = kernel, stride, padding
    _avg_pool_backward_kernel[(cdiv(n, BACKWARD_BLOCK),)](
        grad_output.contiguous(), target, n, *x.shape[-3:], *out_thw, divisor, KT=kt, KH=kh, KW=kw, ST=st, SH=sh,
        SW=sw, PT=pt, PH=ph, PW=pw, COUNT_PAD=count_include_pad, WIDE=needs_int64(x, grad_output),
        BLOCK=BACKWARD_BLOCK, num_warps=4)
    if target is not grad_input:
        grad_input.copy_(target)
    return grad_input


def avg_pool3d_reference(x: torch.Tensor, kernel_size, stride=(), padding=0, ceil_mode: bool = False,
                         count_include_pad: bool = True, divisor_override: int | None = None) -> torch.Tensor:
    """aten::avg_pool3d."""
    return torch.ops.aten.avg_pool3d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int = 64) -> BenchCase:
    """k3 s2 p1 over rows // 512 x 32 x 32 x cols x cols (the DESIGN.md core shape at 4096, 64)."""
    side = cols if device.startswith("cuda") else 8
    x = torch.randn(max(rows // 512, 1), 32, 32, side, side, device=device).to(dtype)
    return BenchCase((x, [3], [2], [1]), bytes_moved=(x.numel() + x.numel() // 8) * x.element_size())


register_aten("aten::avg_pool3d", avg_pool3d_triton)
register_aten("aten::avg_pool3d.out", avg_pool3d_triton)
register_aten("aten::avg_pool3d_backward", avg_pool3d_backward_triton)
register_aten("aten::avg_pool3d_backward.grad_input", avg_pool3d_backward_triton)
avg_pool3d = register("avg_pool3d", reference=avg_pool3d_reference, triton=avg_pool3d_triton,
                      flaggems="ops.avg_pool3d", bench_case=_bench_case)
