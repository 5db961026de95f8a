"""median: the lower median ((n - 1) // 2-th smallest) of all elements, or along a dim with its index
(torch.median, aten::median[.out], median.dim, median.dim_values); integer and float dtypes (and bool
for the global median on CUDA, as ATen there); a NaN anywhere in a row makes that row's median NaN (its
index: the row's first NaN), as torch.

Radix select, no sort: every value maps to an unsigned key with the same order (floats: flip all
bits of negatives, the sign bit of the rest; ints: flip the sign bit; fp16/bf16 widen to fp32 and
small ints to int32 first, so keys are 32-bit, or 64-bit for int64/fp64).
- along a dim: a program holds BLOCK_R rows of up to MAX_TILE elements in registers and builds each
  row's median key bit by bit from the top (set the bit if fewer than rank+1 keys lie below), 32
  compare-and-count steps, then returns the row's first element with that key. Longer rows are
  re-read per bit. 1024x4096 fp32 reads 16.8 MB once (~6 us at 3.0 TB/s); the rest is register work.
- global: 8 bits per pass; each pass is one grid-wide launch adding per-program 256-bin histograms
  of the next digit with atomics and one single-program launch picking the bin that holds the rank;
  the last turns the key back into the value (4 reads of x for 32-bit keys).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import aten_dtype_name, check_kernel_dtype, resize_out
from flagstack.ops.host import cdiv, next_power_of_2, sm_count
from flagstack.ops.registry import BenchCase, register, register_aten

DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
          torch.float16, torch.bfloat16, torch.float32, torch.float64)
# ATen's CUDA global median sorts, which takes bool too (its CPU one and every median.dim reject it)
CUDA_GLOBAL_DTYPES = (*DTYPES, torch.bool)
MAX_TILE = 8192  # longest row kept in registers by one program
ROW_TILE = 2048  # short rows: this many elements (several rows) per program
BLOCK = 4096  # chunk of the global passes and of the re-read of long rows


@triton.jit
def _keys(x, KEY_BITS: tl.constexpr):
    """Unsigned keys ordered as the values (NaNs are dealt with apart)."""
    ints: tl.constexpr = tl.int64 if KEY_BITS == 64 else tl.int32
    floats: tl.constexpr = tl.float64 if KEY_BITS == 64 else tl.float32
    keys: tl.constexpr = tl.uint64 if KEY_BITS == 64 else tl.uint32
    sign: tl.constexpr = -(1 << (KEY_BITS - 1))
    if x.dtype.is_floating():
        bits = x.to(floats).to(ints, bitcast=True)
        bits = bits ^ ((bits >> (KEY_BITS - 1)) | sign)
    else:
        bits = x.to(ints) ^ sign
    return bits.to(keys, bitcast=True)


@triton.jit
def _value(key, is_float: tl.constexpr, KEY_BITS: tl.constexpr):
    """The value (fp32/fp64 or int32/int64) whose key is `key`: _keys inverted."""
    # one return at the end: compiled Triton checks every return statement's type, taken branch or not
    ints: tl.constexpr = tl.int64 if KEY_BITS == 64 else tl.int32
    floats: tl.constexpr = tl.float64 if KEY_BITS == 64 else tl.float32
    sign: tl.constexpr = -(1 << (KEY_BITS - 1))
    bits = key.to(ints, bitcast=True)
    if is_float:
        value = (bits ^ (~(bits >> (KEY_BITS - 1)) | sign)).to(floats, bitcast=True)
    else:
        value = bits ^ sign
    return value


@triton.jit
def _digit_histogram(keys, valid, prefix, SHIFT: tl.constexpr, KEY_BITS: tl.constexpr):
    """Histogram of the 8-bit digit at SHIFT over valid keys whose higher bits equal prefix's."""
    if SHIFT + 8 < KEY_BITS:
        valid = valid & (((keys ^ prefix) >> (SHIFT + 8)) == 0)
    return tl.histogram(((keys >> SHIFT) & 255).to(tl.int32), 256, mask=valid)


@triton.jit
def _pick_digit(hist, rank):
    """The bin holding the rank-th (0-based) counted key, and the rank within that bin."""
    digit = tl.sum((tl.cumsum(hist, 0) <= rank).to(tl.int32), 0)
    below = tl.sum(tl.where(tl.arange(0, 256) < digit, hist, 0), 0)
    return digit, rank - below


@triton.jit
def _is_nan(x):
    if x.dtype.is_floating():
        return x.to(tl.float32) != x.to(tl.float32)  # widened: bf16 NaN compares wrongly in the interpreter
    return x != x


@triton.jit
def _row_median_kernel(x_ptr, values_ptr, indices_ptr, n_rows, n, row_stride, col_stride,
                       KEY_BITS: tl.constexpr, SINGLE_TILE: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    row_at = x_ptr + rows[:, None] * row_stride
    cols = tl.arange(0, BLOCK)[None, :]
    if KEY_BITS == 64:  # padding: the largest key, never below a candidate
        ones = tl.full([BLOCK_R, BLOCK], 0xFFFFFFFFFFFFFFFF, tl.uint64)
    else:
        ones = tl.full([BLOCK_R, BLOCK], 0xFFFFFFFF, tl.uint32)
    if SINGLE_TILE:  # the rows stay in registers for every bit
        mask = row_ok[:, None] & (cols < n)
        x = tl.load(row_at + cols.to(tl.int64) * col_stride, mask=mask)
        keys = tl.where(mask, _keys(x, KEY_BITS), ones)
        nan_at = tl.min(tl.where(_is_nan(x) & mask, cols, n), 1)
    else:
        nan_at = tl.full([BLOCK_R], n, tl.int32)
        for start in range(0, n, BLOCK):
            mask = row_ok[:, None] & (start + cols < n)
            x = tl.load(row_at + (start + cols).to(tl.int64) * col_stride, mask=mask)
            nan_at = tl.minimum(nan_at, tl.min(tl.where(_is_nan(x) & mask, start + cols, n), 1))
    # The median's key is the largest v with count(keys < v) <= rank: build it bit by bit from the top.
    rank = (n - 1) // 2
    prefix = tl.zeros([BLOCK_R], tl.uint64 if KEY_BITS == 64 else tl.uint32)
    for b in tl.static_range(KEY_BITS):
        candidate = prefix | (tl.full([], 1, prefix.dtype) << (KEY_BITS - 1 - b))
        if SINGLE_TILE:
            below = tl.sum((keys < candidate[:, None]).to(tl.int32), 1)
        else:
            below = tl.zeros([BLOCK_R], tl.int32)
            for start in range(0, n, BLOCK):
                mask = row_ok[:, None] & (start + cols < n)
                chunk = _keys(tl.load(row_at + (start + cols).to(tl.int64) * col_stride, mask=mask), KEY_BITS)
                below += tl.sum((mask & (chunk < candidate[:, None])).to(tl.int32), 1)
        prefix = tl.where(below <= rank, candidate, prefix)
    if SINGLE_TILE:
        found = tl.min(tl.where(keys == prefix[:, None], cols, n), 1)
    else:
        found = tl.full([BLOCK_R], n, tl.int32)
        for start in range(0, n, BLOCK):
            mask = row_ok[:, None] & (start + cols < n)
            chunk = _keys(tl.load(row_at + (start + cols).to(tl.int64) * col_stride, mask=mask), KEY_BITS)
            found = tl.minimum(found, tl.min(tl.where(mask & (chunk == prefix[:, None]), start + cols, n), 1))
    index = tl.where(nan_at < n, nan_at, found).to(tl.int64)
    tl.store(values_ptr + rows, tl.load(x_ptr + rows * row_stride + index * col_stride, mask=row_ok), mask=row_ok)
    tl.store(indices_ptr + rows, index, mask=row_ok)


@triton.jit
def _global_histogram_kernel(x_ptr, n, state_ptr, hist_ptr, SHIFT: tl.constexpr, KEY_BITS: tl.constexpr,
                             BLOCK: tl.constexpr):
    # state: [prefix bits, rank, any NaN]. Program p takes chunks p, p + P, ...
    prefix = tl.load(state_ptr).to(tl.uint64 if KEY_BITS == 64 else tl.uint32)
    hist = tl.zeros([256], tl.int32)
    has_nan = tl.zeros([], tl.int32)
    for start in range(tl.program_id(0).to(tl.int64) * BLOCK, n, tl.num_programs(0).to(tl.int64) * BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offsets, mask=offsets < n)
        hist += _digit_histogram(_keys(x, KEY_BITS), offsets < n, prefix, SHIFT, KEY_BITS)
        if SHIFT + 8 == KEY_BITS:  # the first pass also looks for NaNs
            has_nan = tl.maximum(has_nan, tl.max((_is_nan(x) & (offsets < n)).to(tl.int32), 0))
    tl.atomic_add(hist_ptr + tl.arange(0, 256), hist)
    if SHIFT + 8 == KEY_BITS:
        tl.atomic_max(state_ptr + 2, has_nan.to(tl.int64))


@triton.jit
def _global_pick_kernel(state_ptr, hist_ptr, out_ptr, SHIFT: tl.constexpr, KEY_BITS: tl.constexpr,
                        IS_FLOAT: tl.constexpr):
    bins = tl.arange(0, 256)
    digit, rank = _pick_digit(tl.load(hist_ptr + bins), tl.load(state_ptr + 1))
    prefix = tl.load(state_ptr) | (digit.to(tl.int64) << SHIFT)
    tl.store(state_ptr, prefix)
    tl.store(state_ptr + 1, rank)
    tl.store(hist_ptr + bins, tl.zeros([256], tl.int32))  # ready for the next pass
    if SHIFT == 0:
        value = _value(prefix.to(tl.uint64 if KEY_BITS == 64 else tl.uint32), IS_FLOAT, KEY_BITS)
        if IS_FLOAT:
            value = tl.where(tl.load(state_ptr + 2) > 0, float("nan"), value)
        tl.store(out_ptr, value.to(out_ptr.dtype.element_ty))


def _key_bits(dtype: torch.dtype) -> int:
    return 64 if dtype in (torch.int64, torch.float64) else 32


def median_triton(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Lower median of all elements (NaN if any element is NaN or x is empty)."""
    check_kernel_dtype("median", x.dtype, CUDA_GLOBAL_DTYPES if x.is_cuda else DTYPES, x.device)
    if out is None:
        out = torch.empty((), dtype=x.dtype, device=x.device)
    else:
        if out.dtype != x.dtype:
            raise RuntimeError(f"Expected out tensor to have dtype {x.dtype}, but got {out.dtype} instead")
        resize_out(out, ())
    n = x.numel()
    if n == 0:  # ATen: NaN, converted to the dtype
        return out.copy_(torch.tensor(float("nan")).to(x.dtype))
    flat = x.reshape(-1)
    key_bits = _key_bits(x.dtype)
    state = torch.tensor([0, (n - 1) // 2, 0], dtype=torch.int64, device=x.device)
    hist = torch.zeros(256, dtype=torch.int32, device=x.device)
    programs = max(1, min(cdiv(n, BLOCK), 4 * sm_count(x.device, cpu=2)))
    for shift in range(key_bits - 8, -1, -8):
        _global_histogram_kernel[(programs,)](flat, n, state, hist, SHIFT=shift, KEY_BITS=key_bits, BLOCK=BLOCK,
                                              num_warps=8)
        _global_pick_kernel[(1,)](state, hist, out, SHIFT=shift, KEY_BITS=key_bits,
                                  IS_FLOAT=x.dtype.is_floating_point, num_warps=4)
    return out


def median_dim_triton(x: torch.Tensor, dim: int, keepdim: bool = False, *, values: torch.Tensor | None = None,
                      indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower median along `dim` and its index (a row with a NaN: NaN and the row's first NaN)."""
    check_kernel_dtype("median_out", x.dtype, DTYPES, x.device)
    rank = max(x.dim(), 1)
    if not -rank <= dim < rank:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got {dim})")
    dim %= rank
    length = x.shape[dim] if x.dim() else 1
    if length == 0:
        raise IndexError(f"median(): Expected reduction dim {dim} to have non-zero size.")
    shape = list(x.shape)
    if x.dim():
        shape[dim] = 1
        if not keepdim:
            shape.pop(dim)
    if values is not None and values.dtype != x.dtype:
        raise RuntimeError(f"Expected tensor for 'values' to have the same type as tensor for argument #2 'self'; "
                           f"but type {aten_dtype_name(values.dtype)} does not equal {aten_dtype_name(x.dtype)}")
    if indices is not None and indices.dtype != torch.int64:
        raise RuntimeError(f"Expected tensor for argument #1 'indices' to have scalar type Long; but got "
                           f"{aten_dtype_name(indices.dtype)} instead")
    values = resize_out(values, shape) if values is not None else torch.empty(shape, dtype=x.dtype, device=x.device)
    indices = resize_out(indices, shape) if indices is not None else torch.empty(shape, dtype=torch.int64,
                                                                               device=x.device)
    rows = x.movedim(dim, -1).reshape(-1, length) if x.dim() else x.reshape(1, 1)
    if rows.shape[0] == 0:
        return values, indices
    flat_values = torch.empty(rows.shape[0], dtype=x.dtype, device=x.device)
    flat_indices = torch.empty(rows.shape[0], dtype=torch.int64, device=x.device)
    single = length <= MAX_TILE
    block = next_power_of_2(length) if single else BLOCK
    block_r = min(max(ROW_TILE // block, 1), next_power_of_2(rows.shape[0]))
    _row_median_kernel[(cdiv(rows.shape[0], block_r),)](
        rows, flat_values, flat_indices, rows.shape[0], length, rows.stride(0), rows.stride(1),
        KEY_BITS=_key_bits(x.dtype), SINGLE_TILE=single, BLOCK_R=block_r, BLOCK=block,
        num_warps=8 if block_r * block > 1024 else 4)
    values.copy_(flat_values.view(shape))
    indices.copy_(flat_indices.view(shape))
    return values, indices


def median_reference(x: torch.Tensor, dim: int | None = None, keepdim: bool = False):
    """torch.median: the global lower median, or (values, indices) along dim."""
    return torch.median(x) if dim is None else tuple(torch.median(x, dim, keepdim))


def median_any(x: torch.Tensor, dim: int | None = None, keepdim: bool = False):
    """The Triton median with torch.median's calling convention (global when dim is None)."""
    return median_triton(x) if dim is None else median_dim_triton(x, dim, keepdim)


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int = 4096) -> BenchCase:
    """Rows of distinct values (so the median's index is unique): a random permutation per row, as
    integers for fp32 and as consecutive positive bit patterns for fp16/bf16 (cols <= 16384)."""
    perm = torch.rand(rows, cols, device=device).argsort(-1)
    if dtype in (torch.float16, torch.bfloat16):
        x = (perm + 0x3000).to(torch.int16).view(dtype)
    else:
        x = perm.to(dtype)
    return BenchCase((x, -1), bytes_moved=x.numel() * x.element_size())


register_aten("aten::median", median_triton)
register_aten("aten::median.out", median_triton)
register_aten("aten::median.dim", median_dim_triton)
register_aten("aten::median.dim_values", median_dim_triton)
median = register("median", reference=median_reference, triton=median_any, bench_case=_bench_case)
