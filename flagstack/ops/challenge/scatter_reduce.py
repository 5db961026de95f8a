"""scatter_reduce: out[..., index[i], ...] = reduce(self's value (if include_self), every src[i] sent there)
along `dim`, for reduce in sum / prod / mean / amax / amin (torch.scatter_reduce, aten::scatter_reduce.two,
.two_out, scatter_reduce_.two); integer, bool and float dtypes; a NaN sent by src or held by self makes
amax/amin NaN, as torch.

Three launches over a contiguous accumulator `acc` (fp32 for fp16/bf16/fp32, fp64, int64 for integers):
1. fill acc with the reduction's identity (and a zeroed int32 `count` where mean or include_self=False
   needs to know how many values arrived);
2. one program per BLOCK index elements reads index and src once and sends each value with an atomic:
   add for sum/mean, max/min on the float's bits for amax/amin (positive floats order as signed ints,
   negative ones as reversed unsigned ints; NaN becomes the value that wins), a compare-and-swap loop
   for prod (no atomic multiply exists);
3. combine acc with self elementwise (mean divides, flooring for integers as ATen) into the output.
The core shape amax 1024x4096 -> 1024x512 fp32 moves 33.6 MB of int64 index + 16.8 MB of src + 2x2 MB
of self/out (~18 us at 3.0 TB/s); 4M float atomics into 512K addresses set the pace.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import check_kernel_dtype, check_same_dtype, flat_offsets, resize_out
from flagstack.ops.registry import BenchCase, register, register_aten

REDUCES = {"sum": 0, "prod": 1, "mean": 2, "amax": 3, "amin": 4}
ALIASES = {"max": "amax", "min": "amin"}  # ATen accepts these too
DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
          torch.float16, torch.bfloat16, torch.float32, torch.float64)
BLOCK = 1024


@triton.jit
def _identity_kernel(acc_ptr, n, identity, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    tl.store(acc_ptr + offsets, tl.full([BLOCK], identity, acc_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _float_extremum(acc_ptr, offsets, value, mask, IS_MAX: tl.constexpr):
    """Atomic max (IS_MAX) or min of float `value` into acc through its bits; NaN always wins."""
    if acc_ptr.dtype.element_ty == tl.float64:
        signed_ty: tl.constexpr = tl.int64
        unsigned_ty: tl.constexpr = tl.uint64
        nan_bits = 0x7FF8000000000000 if IS_MAX else -2251799813685248  # +NaN / -NaN
    else:
        signed_ty: tl.constexpr = tl.int32
        unsigned_ty: tl.constexpr = tl.uint32
        nan_bits = 0x7FC00000 if IS_MAX else -4194304
    bits = tl.where(value != value, nan_bits, value.to(signed_ty, bitcast=True))
    signed_ptr = (acc_ptr + offsets).to(tl.pointer_type(signed_ty), bitcast=True)
    unsigned_ptr = (acc_ptr + offsets).to(tl.pointer_type(unsigned_ty), bitcast=True)
    negative = bits < 0
    if IS_MAX:  # +NaN tops the positives as a signed int, and sorts below every negative as unsigned
        tl.atomic_max(signed_ptr, bits, mask=mask & ~negative, sem="relaxed")
        tl.atomic_min(unsigned_ptr, bits.to(unsigned_ty, bitcast=True), mask=mask & negative, sem="relaxed")
    else:  # -NaN tops the negatives as unsigned, and is below every positive as a signed int
        tl.atomic_max(unsigned_ptr, bits.to(unsigned_ty, bitcast=True), mask=mask & negative, sem="relaxed")
        tl.atomic_min(signed_ptr, bits, mask=mask & ~negative, sem="relaxed")


@triton.jit
def _atomic_multiply(acc_ptr, offsets, value, mask):
    """acc[offsets] *= value by compare-and-swap on the bits, retried until no other lane interfered."""
    if acc_ptr.dtype.element_ty == tl.float64:
        bits_ty: tl.constexpr = tl.int64
    elif acc_ptr.dtype.element_ty == tl.float32:
        bits_ty: tl.constexpr = tl.int32
    else:
        bits_ty: tl.constexpr = tl.int64
    # Lanes that are done point at element 0 and swap it for itself: atomic_cas has no mask.
    pending = mask
    while tl.max(pending.to(tl.int32), 0) > 0:
        ptrs = (acc_ptr + tl.where(pending, offsets, 0)).to(tl.pointer_type(bits_ty), bitcast=True)
        old = tl.load(ptrs, volatile=True)
        product = old.to(acc_ptr.dtype.element_ty, bitcast=True) * value
        new = tl.where(pending, product.to(bits_ty, bitcast=True), old)
        pending = pending & (tl.atomic_cas(ptrs, old, new, sem="relaxed") != old)


@triton.jit
def _scatter_kernel(index_ptr, src_ptr, acc_ptr, count_ptr, n, meta_ptr, acc_dim_stride,
                    REDUCE: tl.constexpr, COUNT: tl.constexpr, RANK: tl.constexpr, BLOCK: tl.constexpr):
    # meta: index sizes, then the strides of index, src and acc (acc's along dim is 0: index decides it).
    offsets, mask = flat_offsets(n, BLOCK)
    rest = offsets
    index_offsets = tl.zeros([BLOCK], tl.int64)
    src_offsets = tl.zeros([BLOCK], tl.int64)
    acc_offsets = tl.zeros([BLOCK], tl.int64)
    for i in tl.static_range(RANK):
        d = RANK - 1 - i
        size = tl.load(meta_ptr + d)
        coord = rest % size
        rest = rest // size
        index_offsets += coord * tl.load(meta_ptr + RANK + d)
        src_offsets += coord * tl.load(meta_ptr + 2 * RANK + d)
        acc_offsets += coord * tl.load(meta_ptr + 3 * RANK + d)
    target = tl.load(index_ptr + index_offsets, mask=mask, other=0).to(tl.int64)
    acc_offsets += target * acc_dim_stride
    value = tl.load(src_ptr + src_offsets, mask=mask).to(acc_ptr.dtype.element_ty)
    if REDUCE == 0 or REDUCE == 2:
        tl.atomic_add(acc_ptr + acc_offsets, value, mask=mask, sem="relaxed")
    elif REDUCE == 1:
        _atomic_multiply(acc_ptr, acc_offsets, value, mask)
    elif acc_ptr.dtype.element_ty.is_floating():
        _float_extremum(acc_ptr, acc_offsets, value, mask, REDUCE == 3)
    elif REDUCE == 3:
        tl.atomic_max(acc_ptr + acc_offsets, value, mask=mask, sem="relaxed")
    else:
        tl.atomic_min(acc_ptr + acc_offsets, value, mask=mask, sem="relaxed")
    if COUNT:
        tl.atomic_add(count_ptr + acc_offsets, tl.full([BLOCK], 1, tl.int32), mask=mask, sem="relaxed")


@triton.jit
def _combine(a, b, REDUCE: tl.constexpr):
    """The reduction of two values (NaN-propagating for amax/amin)."""
    if REDUCE == 1:
        result = a * b
    elif REDUCE == 3 or REDUCE == 4:
        result = tl.maximum(a, b) if REDUCE == 3 else tl.minimum(a, b)
        if a.dtype.is_floating():
            result = tl.where((a != a) | (b != b), a + b, result)
    else:
        result = a + b
    return result


@triton.jit
def _finish_kernel(self_ptr, acc_ptr, count_ptr, out_ptr, n, REDUCE: tl.constexpr, INCLUDE_SELF: tl.constexpr,
                   COUNT: tl.constexpr, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    original = tl.load(self_ptr + offsets, mask=mask)
    acc = tl.load(acc_ptr + offsets, mask=mask)
    if INCLUDE_SELF:
        result = _combine(original.to(acc.dtype), acc, REDUCE)
    else:
        result = acc
    if COUNT:
        count = tl.load(count_ptr + offsets, mask=mask, other=1)
        if REDUCE == 2:
            total_count = count + INCLUDE_SELF
            if acc.dtype.is_floating():
                result = result / tl.maximum(total_count, 1).to(acc.dtype)
            else:  # ATen sums in the dtype (wrapping) and floor-divides
                total = result.to(out_ptr.dtype.element_ty).to(tl.int64)
                divisor = tl.maximum(total_count, 1).to(tl.int64)
                quotient = total // divisor
                result = tl.where(quotient * divisor > total, quotient - 1, quotient)  # C truncation -> floor
        if not INCLUDE_SELF:
            result = tl.where(count > 0, result, original.to(result.dtype))
    if out_ptr.dtype.element_ty == tl.int1:
        result = result != 0
    tl.store(out_ptr + offsets, result.to(out_ptr.dtype.element_ty), mask=mask)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype == torch.float64:
        return dtype
    return torch.float32 if dtype.is_floating_point else torch.int64


def _identity(reduce: int, acc_dtype: torch.dtype) -> float | int:
    if reduce == REDUCES["prod"]:
        return 1
    if reduce in (REDUCES["amax"], REDUCES["amin"]):
        sign = -1 if reduce == REDUCES["amax"] else 1
        if acc_dtype.is_floating_point:
            return sign * float("inf")
        return torch.iinfo(acc_dtype).min if sign < 0 else torch.iinfo(acc_dtype).max
    return 0


def _check_dim(dim: int, rank: int) -> None:
    if not -rank <= dim < rank:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got {dim})")


def _check(x: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor, reduce: str) -> int:
    """ATen's argument checks, in its order; returns dim wrapped to [0, rank)."""
    if ALIASES.get(reduce, reduce) not in REDUCES:
        raise RuntimeError(f"reduce argument must be either sum, prod, mean, amax or amin, got {reduce}")
    if index.dtype not in (torch.int32, torch.int64):
        raise RuntimeError("scatter(): Expected dtype int32/int64 for index")
    if x.dtype != src.dtype:
        raise RuntimeError("scatter(): Expected self.dtype to be equal to src.dtype")
    rank = max(x.dim(), 1)
    _check_dim(dim, rank)
    dim %= rank
    if index.numel() == 0:
        return dim
    if max(index.dim(), 1) != rank:
        raise RuntimeError("Index tensor must have the same number of dimensions as self tensor")
    _check_dim(dim, max(src.dim(), 1))
    if max(src.dim(), 1) != rank:
        raise RuntimeError("Index tensor must have the same number of dimensions as src tensor")
    sizes = [list(t.shape) or [1] for t in (index, x, src)]
    if any(i > s or (d != dim and i > o) for d, (i, o, s) in enumerate(zip(*sizes))):
        raise RuntimeError(f"Expected index {list(index.shape)} to be no larger than self {list(x.shape)} apart "
                           f"from dimension {dim} and to be no larger size than src {list(src.shape)}")
    low, high = index.aminmax()  # one read of index and a sync: an out-of-range index must not write
    size = sizes[1][dim]
    for bad in (int(low), int(high)):
        if not 0 <= bad < size:
            raise RuntimeError(f"index {bad} is out of bounds for dimension {dim} with size {size}")
    return dim


def _scatter_into(out: torch.Tensor, x: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor,
                  reduce_name: str, include_self: bool) -> torch.Tensor:
    """The three launches, writing the result into `out` (any layout, x's shape and dtype)."""
    reduce_name = ALIASES.get(reduce_name, reduce_name)
    reduce = REDUCES[reduce_name]
    check_kernel_dtype(f"scatter_gather_tensor_{x.device.type}_reduce_{reduce_name}", x.dtype,
                       DTYPES[1:] if reduce == REDUCES["mean"] else DTYPES, x.device)
    n = x.numel()
    if n == 0:
        return out
    if index.numel() == 0:
        return out.copy_(x)
    acc_dtype = _acc_dtype(x.dtype)
    acc = torch.empty(x.shape, dtype=acc_dtype, device=x.device)
    count_needed = reduce == REDUCES["mean"] or not include_self
    count = torch.zeros(x.shape if count_needed else (1,), dtype=torch.int32, device=x.device)
    _identity_kernel[(triton.cdiv(n, BLOCK),)](acc, n, _identity(reduce, acc_dtype), BLOCK=BLOCK, num_warps=4)
    rank = max(x.dim(), 1)
    index_, src_ = (t.reshape(1) if t.dim() == 0 else t for t in (index, src))  # 0-dim: one element
    acc_strides = list(acc.stride()) or [1]
    dim_stride, acc_strides[dim] = acc_strides[dim], 0
    meta = torch.tensor([*index_.shape, *index_.stride(), *src_.stride(), *acc_strides], dtype=torch.int64)
    m = index.numel()
    _scatter_kernel[(triton.cdiv(m, BLOCK),)](index_, src_, acc, count, m, meta.to(x.device), dim_stride,
                                              REDUCE=reduce, COUNT=count_needed, RANK=rank, BLOCK=BLOCK,
                                              num_warps=4)
    target = out if out.is_contiguous() else torch.empty_like(x, memory_format=torch.contiguous_format)
    _finish_kernel[(triton.cdiv(n, BLOCK),)](x.contiguous(), acc, count, target, n, REDUCE=reduce,
                                             INCLUDE_SELF=include_self, COUNT=count_needed, BLOCK=BLOCK, num_warps=4)
    if target is not out:
        out.copy_(target)
    return out


def scatter_reduce_triton(x: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor, reduce: str, *,
                          include_self: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    """x with src's values reduced into the positions `index` names along `dim` (aten::scatter_reduce.two[_out])."""
    dim = _check(x, dim, index, src, reduce)
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    else:
        check_same_dtype(x.dtype, out)
        resize_out(out, x.shape)
    return _scatter_into(out, x, dim, index, src, reduce, include_self)


def scatter_reduce_inplace_triton(x: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor, reduce: str,
                                  *, include_self: bool = True) -> torch.Tensor:
    """In-place scatter_reduce into x (aten::scatter_reduce_.two)."""
    dim = _check(x, dim, index, src, reduce)
    if x.numel() > 1 and 0 in x.stride():
        raise RuntimeError("unsupported operation: more than one element of the written-to tensor refers to a "
                           "single memory location. Please clone() the tensor before performing the operation.")
    return _scatter_into(x, x.clone() if index.numel() else x, dim, index, src, reduce, include_self)


def scatter_reduce_reference(x: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor, reduce: str, *,
                             include_self: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    """torch.scatter_reduce."""
    return torch.scatter_reduce(x, dim, index, src, reduce, include_self=include_self, out=out)


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int = 4096) -> BenchCase:
    """amax of rows x cols src into rows x cols/8 (the DESIGN.md core shape at 1024, 4096)."""
    x = torch.randn(rows, cols // 8, device=device).to(dtype)
    src = torch.randn(rows, cols, device=device).to(dtype)
    index = torch.randint(0, cols // 8, (rows, cols), device=device)
    moved = index.numel() * 8 + src.numel() * src.element_size() + 2 * x.numel() * x.element_size()
    return BenchCase((x, 1, index, src, "amax"), bytes_moved=moved)


register_aten("aten::scatter_reduce.two", scatter_reduce_triton)
register_aten("aten::scatter_reduce.two_out", scatter_reduce_triton)
register_aten("aten::scatter_reduce_.two", scatter_reduce_inplace_triton)
scatter_reduce = register("scatter_reduce", reference=scatter_reduce_reference, triton=scatter_reduce_triton,
                          flaggems="ops.scatter_reduce", bench_case=_bench_case)
