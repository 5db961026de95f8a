"""Activations: gated MLP activations (silu_and_mul, gelu_and_mul) and plain silu / gelu.

Gated: x[..., 2N] = [gate | up] -> act(gate) * up, [..., N]. Memory traffic: read 2*M*N, write M*N
elements: 3*M*N*elem_size bytes; Qwen3-4B at M=32768, N=9728, bf16 is 1.91 GB -> ~640 us at 3.0 TB/s.
Plain: read + write numel elements. All of it is memory-bound; the kernels only aim to stream.
Each program covers 1024 consecutive elements of the output (4 warps, one 16-byte vector of bf16
per thread and operand; 2048 was faster only at 256 rows, by 0.6 us, on an H100). Blocks drop their
bounds mask when the element count is a multiple of the block, and offsets are 32-bit below
INT32_MAX_ELEMENTS: fewer instructions per element (exact gated GELU for sm_90: 58 -> 44 SASS per
output), which matters for GELU; on their own they timed within 1% of the masked int64 kernel on an
H100 at 4096 and 32768 rows (at 256 rows gelu 9.3 vs 8.7 us, with the A&S erf 8.8).

Rounding: the kernel computes act(gate) * up in fp32 and rounds once. The reference is HF
transformers' `act_fn(gate) * up` in the model dtype, which rounds the activation first. Copying that
double rounding does not make the kernel bit-exact: exp differs in the last fp32 bit between libraries
(GPU exp is approximate), which flips the first rounding now and then, and a flipped activation puts
the product up to 2 ulps off -- outside the fp16 tolerance (1e-3, one ulp). Rounding once stays within
1 ulp of HF's result (and 0.5 ulp of the exact one) for every input.
Exact GELU (approximate="none") is x * Phi(x) with erfc from Abramowitz & Stegun 7.1.26 (error
< 1e-6 against float64 GELU): libdevice's erf made the kernel instruction-bound (39 SASS per element
for sm_90, 28 this way), 470 -> 424 us for gelu at 32768 x 9728 bf16 on an H100 (torch eager: 445).
GELU with approximate="tanh" uses the identity 0.5 * (1 + tanh(z)) = sigmoid(2z), which is accurate
for every z and needs no tanh (the Triton interpreter has no libdevice).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from flagstack.ops.checks import FLOAT_DTYPES, check_tensor, rows_view
from flagstack.ops.host import cdiv
from flagstack.ops.launch_cache import launch
from flagstack.ops.pdl import pdl_launch, pdl_wait
from flagstack.ops.registry import BenchCase, register, register_aten

APPROXIMATIONS = ("none", "tanh")
_ACT_ID = {"silu": 0, "gelu_none": 1, "gelu_tanh": 2}
# elements per program: 4 warps x 32 threads x 8 (one 16-byte vector of bf16 per thread and operand);
# on an H100 at 4096 and 32768 x 9728 this matched or beat 2048-4096 elements at 8 warps (by up to 1%)
_BLOCK, _WARPS = 1024, 4
INT32_MAX_ELEMENTS = 2 ** 31 - 2 ** 20  # int32 offsets stay valid below this (plus one block of slack)


@triton.jit
def _activate(x, ACT: tl.constexpr):
    """fp32 activation: 0 = silu, 1 = exact gelu, 2 = tanh-approximated gelu."""
    if ACT == 0:
        y = x / (1.0 + tl.exp(-x))
    elif ACT == 1:
        y = x * _normal_cdf(x)
    else:
        y = x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))  # 2*sqrt(2/pi)
    return y


@triton.jit
def _normal_cdf(x):
    """Phi(x) = 1 - erfc(x / sqrt 2) / 2 for x >= 0, erfc(-x / sqrt 2) / 2 below, with Abramowitz &
    Stegun 7.1.26 for erfc(z), z >= 0: t * P(t) * exp(-z^2), t = 1 / (1 + 0.3275911 z), absolute error
    < 1.5e-7 (GELU's absolute error < 1e-6 for |x| < 10). The negative side comes from the tail
    directly, without 1 + erf's cancellation."""
    # constants folded: p / sqrt 2 = 0.23164190, P's coefficients halved, -z^2 log2 e = x^2 * -0.72134752
    t = tl.fdiv(tl.full(x.shape, 1.0, tl.float32), 1.0 + 0.2316419 * tl.abs(x), ieee_rounding=False)
    half_p = t * (0.127414796 + t * (-0.142248368 + t * (0.7107068705 + t * (-0.7265760135 + t * 0.5307027145))))
    half_tail = half_p * tl.exp2(x * x * -0.7213475204444817)
    return tl.where(x >= 0, 1.0 - half_tail, half_tail)


# n is left specialized on purpose: Triton then knows when n is a multiple of 16, so the masked
# loads stay 16-byte vectors (do_not_specialize=["n"] made them 1.6-2.4x slower on an H100
# at 1024-element blocks).
# Token counts never change that property for model widths that are multiples of 16 (9728, 2560).
@triton.jit
def _block_offsets(n, BLOCK: tl.constexpr, EVEN: tl.constexpr, INT32: tl.constexpr):
    """This program's BLOCK flat offsets and their bounds mask."""
    if INT32:
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if EVEN:  # an all-true constant mask: Triton folds it away (no compare per element)
        mask = tl.full((BLOCK,), 1, tl.int1)
    else:
        mask = offs < n
    return offs, mask


@triton.jit
def _gated_kernel(x_ptr, y_ptr, n, n_cols, x_row_stride, ACT: tl.constexpr, BLOCK: tl.constexpr,
                  EVEN: tl.constexpr, INT32: tl.constexpr, USE_PDL: tl.constexpr = False):
    # Flat over the (contiguous) output: each program streams BLOCK consecutive outputs, reading the
    # matching gate and up elements. Consecutive programs touch consecutive memory, which measured
    # 100% of copy speed on an H100 where 2-D [rows, cols] tiles stayed at 95%.
    pdl_wait(USE_PDL)  # the gate/up rows come from the GEMM before (ops/pdl.py)
    offs, mask = _block_offsets(n, BLOCK, EVEN, INT32)
    row = offs // n_cols  # 32-bit division when INT32
    col = offs - row * n_cols
    gate_ptrs = x_ptr + row * x_row_stride + col
    gate = tl.load(gate_ptrs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_ptrs + n_cols, mask=mask, other=0.0).to(tl.float32)
    y = _activate(gate, ACT) * up  # rounded once (see the module docstring)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pointwise_kernel(x_ptr, y_ptr, n, ACT: tl.constexpr, BLOCK: tl.constexpr, EVEN: tl.constexpr,
                      INT32: tl.constexpr):
    offs, mask = _block_offsets(n, BLOCK, EVEN, INT32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, _activate(x, ACT).to(y_ptr.dtype.element_ty), mask=mask)


def _launch_flags(n: int, largest_offset: int) -> dict:
    """EVEN (no bounds masks) when n outputs fill whole blocks; INT32 when every offset fits in int32."""
    return {"EVEN": n % _BLOCK == 0, "INT32": largest_offset < INT32_MAX_ELEMENTS}


def _gated_triton(x: torch.Tensor, act: str) -> torch.Tensor:
    rows = rows_view(x)
    n = rows.shape[1] // 2
    out = torch.empty(rows.shape[0], n, dtype=x.dtype, device=x.device)
    total = rows.shape[0] * n
    if total > 0:
        # the input's largest offset bounds every offset the kernel forms (row * stride + col + n)
        flags = _launch_flags(total, rows.shape[0] * rows.stride(0) + 2 * n)
        launch(_gated_kernel, (cdiv(total, _BLOCK),), rows, out, total, n, rows.stride(0), ACT=_ACT_ID[act],
               BLOCK=_BLOCK, num_warps=_WARPS, **pdl_launch(x.device), **flags)
    return out if rows is x else out.view(*x.shape[:-1], n)


def _pointwise_triton(x: torch.Tensor, act: str) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel() > 0:
        launch(_pointwise_kernel, (cdiv(x.numel(), _BLOCK),), x, out, x.numel(), ACT=_ACT_ID[act], BLOCK=_BLOCK,
               num_warps=_WARPS, **_launch_flags(x.numel(), x.numel()))
    return out


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :N]) * x[..., N:] with the Triton kernel."""
    return _gated_triton(x, "silu")


def gelu_and_mul_triton(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(x[..., :N], approximate) * x[..., N:] with the Triton kernel."""
    return _gated_triton(x, f"gelu_{approximate}")


def silu_triton(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) elementwise with the Triton kernel (output contiguous)."""
    return _pointwise_triton(x, "silu")


def gelu_triton(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU elementwise (exact, or the tanh approximation) with the Triton kernel (output contiguous)."""
    return _pointwise_triton(x, f"gelu_{approximate}")


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for x = [gate | up] on the last dim, rounded as HF transformers does."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate).mul_(up)


def gelu_and_mul_reference(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(gate, approximate) * up for x = [gate | up] on the last dim, rounded as HF does."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.gelu(gate, approximate=approximate) * up


def silu_reference(x: torch.Tensor) -> torch.Tensor:
    """SiLU elementwise (torch)."""
    return torch.nn.functional.silu(x)


def gelu_reference(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU elementwise (torch), exact or tanh-approximated."""
    return torch.nn.functional.gelu(x, approximate=approximate)


def _check_approximate(approximate: str) -> None:
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS}, got {approximate!r}")


def _validate_gated(x: torch.Tensor, approximate: str = "none") -> None:
    check_tensor("x", x)
    if x.shape[-1] % 2:
        raise ValueError(f"x last dimension must be even ([gate | up]), got shape {tuple(x.shape)}")
    _check_approximate(approximate)


def _validate_pointwise(x: torch.Tensor, approximate: str = "none") -> None:
    check_tensor("x", x, min_dim=0)
    _check_approximate(approximate)


def _bench_gated(rows: int, dtype: torch.dtype, device: str, intermediate: int = 9728) -> BenchCase:
    x = torch.randn(rows, 2 * intermediate, dtype=dtype, device=device)
    return BenchCase((x,), bytes_moved=3 * rows * intermediate * x.element_size())


def _bench_pointwise(rows: int, dtype: torch.dtype, device: str, intermediate: int = 9728) -> BenchCase:
    x = torch.randn(rows, intermediate, dtype=dtype, device=device)
    return BenchCase((x,), bytes_moved=2 * x.numel() * x.element_size())


def aten_silu(self: torch.Tensor) -> torch.Tensor:
    """aten::silu(Tensor self) -> Tensor."""
    if self.dtype not in FLOAT_DTYPES:  # e.g. float64: same maths through ops we do not override
        return self * torch.sigmoid(self)
    return silu_triton(self)


def aten_gelu(self: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    """aten::gelu(Tensor self, *, str approximate='none') -> Tensor."""
    _check_approximate(approximate)
    if self.dtype not in FLOAT_DTYPES:
        if approximate == "tanh":
            return 0.5 * self * (1 + torch.tanh(math.sqrt(2 / math.pi) * (self + 0.044715 * self.pow(3))))
        return 0.5 * self * (1 + torch.erf(self / math.sqrt(2)))
    return gelu_triton(self, approximate)


silu_and_mul = register("silu_and_mul", reference=silu_and_mul_reference, triton=silu_and_mul_triton,
                        validate=_validate_gated, bench_case=_bench_gated)
gelu_and_mul = register("gelu_and_mul", reference=gelu_and_mul_reference, triton=gelu_and_mul_triton,
                        validate=_validate_gated, bench_case=_bench_gated)
silu = register("silu", reference=silu_reference, triton=silu_triton, validate=_validate_pointwise,
                bench_case=_bench_pointwise)
gelu = register("gelu", reference=gelu_reference, triton=gelu_triton, validate=_validate_pointwise,
                bench_case=_bench_pointwise)
register_aten("aten::silu", aten_silu)
register_aten("aten::gelu", aten_gelu)
