"""conv_transpose2d (F.conv_transpose2d): stride, padding, output_padding, dilation, groups, bias; a 4-D
[N, C_in, H, W] or batch-less 3-D input; fp16 / bf16 / fp32 (ATen also takes fp64 and, on CPU, int64:
those fall back to ATen through the adapter).

out[n, g*Cog + co, oh, ow] = bias + sum over (ci, kh, kw) of x[n, g*Cig + ci, ih, iw] * w[g*Cig + ci, co, kh, kw]
where oh = ih * SH - PH + kh * DH (and alike along w). The kernel computes it as an implicit GEMM: an
output tile of BLOCK_M pixels x BLOCK_N channels gathers, per kernel tap, the [BLOCK_M, BLOCK_K] input
rows that reach it and does tl.dot with the tap's [BLOCK_K, BLOCK_N] weights, in fp32. Each program holds
pixels of one stride phase (oh % SH, ow % SW): a tap reaches either all of them or none, so the
(SH*SW - 1) / (SH*SW) of taps that miss a phase are skipped whole instead of being masked per pixel.
The kernel reads x and w channels-last (the wrapper copies them so, x through copy_channels: a pixel's channels
are one 16-byte vector load). Memory traffic: the copy of x, read x ~once per tap that hits the phase (from
L2) and w per tile, write out once; 16x64x64x64 * 64x32x3x3 stride 2 bf16 reads 8.4 MB and writes 17 MB (~9 us
at 3.0 TB/s; the copy adds ~4 us). It takes ~41 us on an H100, so memory is not its limit; the strided NCHW
stores are not it either: writing an NHWC output instead was slower (62 against 57.5 us, session 7's probe).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.utils.weak import WeakIdKeyDictionary

from flagstack.ops.challenge.channels_copy import to_memory_format
from flagstack.ops.challenge.images import bench_images, output_memory_format
from flagstack.ops.challenge.pointwise import aten_dtype_name, check_kernel_dtype, check_same_dtype, resize_out
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.launch_cache import CachedLauncher, aligned, remember
from flagstack.ops.registry import BenchCase, register, register_aten

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _tap_dot(acc, x_rows, w_tap, row_ok, co_ok, k0, C_IN_G, sxc, swi, PRECISION: tl.constexpr,
             UPCAST: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + the [BLOCK_M, BLOCK_K] input rows of one tap, channels k0.., times the tap's weights."""
    ci = k0 + tl.arange(0, BLOCK_K)
    ci_ok = ci < C_IN_G
    a = tl.load(x_rows[:, None] + ci[None, :] * sxc, mask=row_ok[:, None] & ci_ok[None, :], other=0.0)
    b = tl.load(w_tap[None, :] + ci[:, None] * swi, mask=ci_ok[:, None] & co_ok[None, :], other=0.0)
    if UPCAST:  # the interpreter's bf16 dot is wrong (DESIGN.md); fp32 is exact there
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _conv_transpose2d_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, N, H, W, OH, OW, QH, QW, C_IN_G, C_OUT_G,
                             sxn, sxc, sxh, sxw, swi, swo, swh, sww, son, soc, soh, sow,
                             SH, SW, PH, PW, DH, DW, KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr,
                             PRECISION: tl.constexpr, UPCAST: tl.constexpr, WIDE: tl.constexpr, ONE_K: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Grid: (pixel tiles x phases, groups x channel tiles). The phases of one tile are neighbouring
    # programs, so their interleaved stores fill the same cache lines while these stay in L2. Pixel m of
    # phase (rh, rw) is output (n, qh * SH + rh, qw * SW + rw).
    phase, tile = tl.program_id(0) % (SH * SW), tl.program_id(0) // (SH * SW)
    rh, rw = phase // SW, phase % SW
    n_tiles = tl.cdiv(C_OUT_G, BLOCK_N)
    group = tl.program_id(1) // n_tiles
    co = (tl.program_id(1) % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    if WIDE:  # 64-bit only where a tensor needs it: the pixel math runs once per layout the tile takes
        m = tile.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    qw, qh, n = m % QW, (m // QW) % QH, m // (QW * QH)
    oh, ow = qh * SH + rh, qw * SW + rw
    pixel_ok = (n < N) & (oh < OH) & (ow < OW)
    co_ok = co < C_OUT_G
    x_group = x_ptr + n * sxn + group * C_IN_G * sxc  # [BLOCK_M] pointers, channel 0 of the group
    w_group = w_ptr + group * C_IN_G * swi + co * swo  # [BLOCK_N] pointers, tap (0, 0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for kh in tl.static_range(KH):
        # oh + PH - kh * DH = qh * SH + th: the tap reaches this phase iff SH divides th, from ih = qh + th / SH.
        th = rh + PH - kh * DH
        if (th % SH + SH) % SH == 0:  # sign-safe under C and Python modulo alike
            ih = qh + th // SH  # exact division, so truncation and floor agree
            for kw in tl.static_range(KW):
                tw = rw + PW - kw * DW
                if (tw % SW + SW) % SW == 0:
                    iw = qw + tw // SW
                    row_ok = pixel_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                    x_rows = x_group + ih * sxh + iw * sxw
                    w_tap = w_group + kh * swh + kw * sww
                    if ONE_K:  # straight-line taps: the loads of all of them can be in flight at once
                        acc = _tap_dot(acc, x_rows, w_tap, row_ok, co_ok, 0, C_IN_G, sxc, swi, PRECISION, UPCAST,
                                       BLOCK_K)
                    else:
                        for k0 in range(0, C_IN_G, BLOCK_K):
                            acc = _tap_dot(acc, x_rows, w_tap, row_ok, co_ok, k0, C_IN_G, sxc, swi, PRECISION,
                                           UPCAST, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + group * C_OUT_G + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    out_at = (n * son + oh * soh + ow * sow)[:, None] + ((group * C_OUT_G + co) * soc)[None, :]
    tl.store(out_ptr + out_at, acc.to(out_ptr.dtype.element_ty), mask=pixel_ok[:, None] & co_ok[None, :])


def _pair(value, name: str) -> tuple[int, int]:
    """ATen's expand_param_if_needed: one int, or a list of 1 or 2."""
    values = [value] if isinstance(value, int) else list(value)
    if len(values) not in (1, 2):
        raise RuntimeError(f"expected {name} to be a single integer value or a list of 2 values to match the "
                           f"convolution dimensions, but got {name}={values}")
    return (int(values[0]), int(values[-1]))


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, output_padding,
           groups: int, dilation) -> tuple[int, int]:
    """ATen's argument checks (same exception types); returns the output (OH, OW)."""
    if weight.dim() != 4:
        raise RuntimeError(f"conv_transpose2d expects a 4-dimensional weight, but got weight of size "
                           f"{list(weight.shape)}")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if min(padding) < 0:
        raise RuntimeError("negative padding is not supported")
    if min(output_padding) < 0:
        raise RuntimeError("negative output_padding is not supported")
    if min(stride) <= 0:
        raise RuntimeError("non-positive stride is not supported")
    if min(dilation) <= 0:
        raise RuntimeError("dilation should be greater than zero")
    c_in, c_out_g = weight.shape[:2]
    if c_in == 0 or c_in % groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} (and at least 1) at "
                           f"dimension 0, but got weight of size {list(weight.shape)} instead")
    if x.shape[1] != c_in:
        raise RuntimeError(f"Given transposed=1, weight of size {list(weight.shape)}, expected input{list(x.shape)} "
                           f"to have {c_in} channels, but got {x.shape[1]} channels instead")
    if bias is not None and (bias.dim() != 1 or bias.numel() != c_out_g * groups):
        raise RuntimeError(f"Given transposed=1, weight of size {list(weight.shape)}, expected bias to be "
                           f"1-dimensional with {c_out_g * groups} elements, but got bias of size "
                           f"{list(bias.shape)} instead")
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= s and op >= d:
            raise RuntimeError(f"output padding must be smaller than either stride or dilation, but got "
                               f"output_padding={list(output_padding)} stride={list(stride)} "
                               f"dilation={list(dilation)}")
    if x.shape[0] and not all(x.shape[2:]):
        raise RuntimeError(f"Only zero batch or zero channel inputs are supported, but got input shape: "
                           f"{list(x.shape)}")
    out_hw = tuple((size - 1) * s - 2 * p + d * (k - 1) + op + 1 for size, s, p, d, k, op in
                   zip(x.shape[2:], stride, padding, dilation, weight.shape[2:], output_padding))
    if min(out_hw) < 1:
        raise RuntimeError(f"Given input size per channel: ({x.shape[2]} x {x.shape[3]}). Calculated output size "
                           f"per channel: ({out_hw[0]} x {out_hw[1]}). Output size is too small")
    for other, name in ((weight, "weight"), (bias, "bias")):
        if other is not None and other.dtype != x.dtype:
            raise RuntimeError(f"Input type ({aten_dtype_name(x.dtype)}) and {name} type "
                               f"({aten_dtype_name(other.dtype)}) should be the same")
    check_kernel_dtype("conv_transpose2d", x.dtype, DTYPES, x.device)
    return out_hw  # type: ignore[return-value]


# CUDA launch: pixel tile cap, warps, stages. From scripts/conv_probe.py on an H100 (core shape 16x64x64x64 bf16,
# GPU time by graph replay, session 7): 41.5 us against torch's 55.0 once the taps of a one-K-tile layer run
# straight-line (the K loop around each tap, with one iteration, had left each tap waiting on its own loads:
# 57.5 us) and x's channels-last copy went to copy_channels (4 us, torch's copy 20 us). Pixel tiles of 64 or
# 8 warps: 42-44 us. Stages only pipeline the K loop of layers with more than 64 input channels per group;
# with one stage the fp32 test_large case faulted (illegal address) in 4 of 6 matrix runs in session 6, so 3.
CUDA_CONFIG = {"BLOCK_M": 128, "num_warps": 4, "num_stages": 3}


_TAP_MAJOR: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight -> (its version and storage, tap-major copy, storage)


def _tap_major(weight: torch.Tensor) -> torch.Tensor:
    """weight [C_in, C_out_g, KH, KW] as a view of a copy laid out [KH, KW, C_in, C_out_g], made once per weight
    and again after it changes (in place: its version; swapped storage: its storage). Repeated calls with one
    weight are the common case, and keeping the copy took the wrapper's host time from 132 to 90 us a call
    (medians; 2-core CI CPU, meta tensors, kernels stubbed out, interleaved), and one launch fewer on a GPU.
    The price is a second copy of a small tensor.
    Inference tensors keep no version to tell a change by: those are re-laid out on every call."""
    if weight.is_inference():
        return weight.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
    storage = weight.untyped_storage()
    key = (weight._version, weight.data_ptr(), storage._cdata)
    entry = _TAP_MAJOR.get(weight)
    if entry is None or entry[0] != key:
        # the entry holds the storage it was made from, so that address cannot be freed and handed to another
        # storage that the key would then mistake for this one
        entry = (key, weight.detach().permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1), storage)
        _TAP_MAJOR[weight] = entry
    return entry[1]


def _blocks(pixels: int, c_in_g: int, c_out_g: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): tl.dot needs 16 or more per side; the interpreter pays per program
    and per element, so it gets small pixel tiles."""
    block_m = min(CUDA_CONFIG["BLOCK_M"] if device.type == "cuda" else 32, max(16, next_power_of_2(pixels)))
    block_n = min(64, max(16, next_power_of_2(c_out_g)))
    block_k = min(64, max(16, next_power_of_2(c_in_g)))
    return block_m, block_n, block_k


@dataclass(frozen=True)
class _Plan:
    """What one call key decides: the output's shape and layout, and the launch apart from the tensors."""

    shape: tuple[int, int, int, int]
    memory_format: torch.memory_format
    grid: tuple[int, int]
    sizes: tuple[int, ...]  # N, H, W, OH, OW, QH, QW, C_IN_G, C_OUT_G
    params: tuple[int, ...]  # SH, SW, PH, PW, DH, DW
    constexprs: dict


_PLANS: dict[tuple, _Plan] = {}  # call key (shapes, strides, dtypes, devices, parameters) -> its plan
_LAUNCH = CachedLauncher(_conv_transpose2d_kernel)


def _plan(key: tuple, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding,
          output_padding, groups: int, dilation) -> _Plan:
    """Check the arguments as ATen does and size the launch, once per call key."""
    out_hw = _check(x, weight, bias, stride, padding, output_padding, groups, dilation)
    n, c_in, height, width = x.shape
    c_out_g = weight.shape[1]
    qh, qw = cdiv(out_hw[0], stride[0]), cdiv(out_hw[1], stride[1])
    block_m, block_n, block_k = _blocks(n * qh * qw, c_in // groups, c_out_g, x.device)
    shape = (n, c_out_g * groups, *out_hw)
    elements = max(x.numel(), n * c_out_g * groups * out_hw[0] * out_hw[1])
    plan = _Plan(shape, output_memory_format(x),
                 (cdiv(n * qh * qw, block_m) * stride[0] * stride[1], groups * cdiv(c_out_g, block_n)),
                 (n, height, width, *out_hw, qh, qw, c_in // groups, c_out_g), (*stride, *padding, *dilation),
                 dict(KH=weight.shape[2], KW=weight.shape[3], HAS_BIAS=bias is not None,
                      # fp32: three TF32 passes give ~fp32 accuracy on tensor cores (torch's cuDNN default is one
                      # pass); fp16 / bf16 ignore it
                      PRECISION="tf32x3" if x.dtype == torch.float32 else "tf32",
                      UPCAST=INTERPRETED and x.dtype == torch.bfloat16,
                      WIDE=elements >= 2 ** 31 - block_m * max(stride), ONE_K=c_in // groups <= block_k,
                      BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k))
    remember(_PLANS, key, plan)
    return plan


def conv_transpose2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
                            padding=0, output_padding=0, groups: int = 1, dilation=1, *,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """Transposed 2-D convolution of [N, C_in, H, W] (or [C_in, H, W]) with weight [C_in, C_out / groups, KH, KW]."""
    if x.dim() not in (3, 4):
        raise RuntimeError(f"Expected 3D (unbatched) or 4D (batched) input to conv_transpose2d, but got input of "
                           f"size: {list(x.shape)}")
    stride, padding, output_padding, dilation = (_pair(v, name) for v, name in (
        (stride, "stride"), (padding, "padding"), (output_padding, "output_padding"), (dilation, "dilation")))
    batched = x if x.dim() == 4 else x.unsqueeze(0)
    groups = int(groups)
    # The host time of a call matters here (launch_cache.py): the checks and the launch's sizes are made once
    # per key of everything they depend on.
    key = (batched.shape, batched.stride(), batched.dtype, batched.device, weight.shape, weight.stride(),
           weight.dtype, weight.device, None if bias is None else (bias.shape, bias.dtype, bias.device),
           stride, padding, output_padding, groups, dilation)
    plan = _PLANS.get(key) or _plan(key, batched, weight, bias, stride, padding, output_padding, groups, dilation)
    final_shape = plan.shape if x.dim() == 4 else plan.shape[1:]
    if out is not None:
        check_same_dtype(x.dtype, out)
        resize_out(out, final_shape)
        target = out if x.dim() == 4 else out.unsqueeze(0)
    else:
        target = torch.empty(plan.shape, dtype=x.dtype, device=x.device, memory_format=plan.memory_format)
    if target.numel() == 0:
        return out if out is not None else target.reshape(final_shape)
    # Channels innermost for the kernel's operands: an A row (one pixel's input channels) and a B row (one
    # input channel's output channels at a tap) become contiguous, 16-byte loads instead of one load per
    # element (NCHW put channels 4096 elements apart: 64 scalar loads per thread per tap, 255 registers).
    # The copies cost a read and a write of x (8.4 MB on the core shape) and nothing for the small weight.
    batched_cl = to_memory_format(batched, torch.channels_last)
    weight_cl = _tap_major(weight)
    bias_or_any = bias if bias is not None else weight_cl  # HAS_BIAS=False never reads it
    tensors = (batched_cl, weight_cl, bias_or_any, target)
    # The integers below are functions of the key and of the target's strides (out= may bring any)
    _LAUNCH((key, target.stride(), *map(aligned, tensors)), plan.grid,
            (*tensors, *plan.sizes, *batched_cl.stride(), *weight_cl.stride(), *target.stride(), *plan.params),
            plan.constexprs, num_warps=CUDA_CONFIG["num_warps"], num_stages=CUDA_CONFIG["num_stages"])
    return out if out is not None else target if x.dim() == 4 else target.squeeze(0)


def conv_transpose2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
                               padding=0, output_padding=0, groups: int = 1, dilation=1) -> torch.Tensor:
    """Transposed 2-D convolution (torch's F.conv_transpose2d)."""
    return torch.nn.functional.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)


def convolution_adapter(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation,
                        transposed: bool, output_padding, groups: int, *, out: torch.Tensor | None = None):
    """aten::convolution[.out] -> our kernel for 2-D transposed convolutions of our dtypes, else ATen's own.

    Why aten::convolution and not aten::conv_transpose2d.input: the latter is CompositeImplicitAutograd,
    so enable() could only override it at AutogradCUDA, which drops autograd. F.conv_transpose2d calls
    aten::convolution (after adding the batch dim of a 3-D input); it has its own autograd formula
    (convolution_backward), so our CUDA kernel serves the forward and gradients still flow."""
    if not transposed or x.dim() != 4 or weight.dim() != 4 or x.dtype not in DTYPES:
        return NotImplemented
    return conv_transpose2d_triton(x, weight, bias, stride, padding, output_padding, groups, dilation, out=out)


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int | None = None) -> BenchCase:
    """Core shape at rows=4096, cols=64: 16x64x64x64 * 64x32x3x3, stride 2 (output 16x32x129x129)."""
    x = bench_images(rows, 64, cols, dtype, device)
    weight = torch.randn(64, 32, 3, 3, device=device).to(dtype)
    side = 2 * x.shape[-1] + 1
    out_bytes = x.shape[0] * 32 * side * side * x.element_size()
    return BenchCase((x, weight, None, 2), bytes_moved=(x.numel() + weight.numel()) * x.element_size() + out_bytes)


register_aten("aten::convolution", convolution_adapter)
register_aten("aten::convolution.out", convolution_adapter)
conv_transpose2d = register("conv_transpose2d", reference=conv_transpose2d_reference, triton=conv_transpose2d_triton,
                            bench_case=_bench_case)
