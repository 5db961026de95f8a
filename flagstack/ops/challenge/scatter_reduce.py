"""scatter_reduce: out[..., index[i], ...] = reduce(self's value (if include_self), every src[i] sent there)
along `dim`, for reduce in sum / prod / mean / amax / amin (torch.scatter_reduce, aten::scatter_reduce.two,
.two_out, scatter_reduce_.two); integer, bool (as ATen: not for mean, on CUDA for sum only) and float
dtypes; a NaN sent by src or held by self makes amax/amin NaN, as torch.

Three launches over a contiguous accumulator `acc` (fp32 for fp16/bf16/fp32, fp64, int64 for integers;
for float amax/amin the int32/int64 order keys of the floats), with no host sync on CUDA:
1. fill acc with the reduction's identity (and a zeroed int32 `count` where mean or include_self=False
   needs to know how many values arrived);
2. one program per BLOCK index elements reads index and src once and sends each value with an atomic:
   add for sum/mean, integer max/min for amax/amin (floats as order keys: a float's bits, with the
   magnitude bits flipped for negatives, order as signed ints; NaN becomes the key that wins), a
   compare-and-swap loop for prod (no atomic multiply exists);
3. combine acc with self elementwise (mean divides, flooring for integers as ATen) into the output.
The core shape amax 1024x4096 -> 1024x512 fp32 moves 33.6 MB of int64 index + 16.8 MB of src + 2x2 MB
of self/out (~18 us at 3.0 TB/s); 4M atomics into 512K addresses set the pace: one per value (the
float bits once took a signed max and an unsigned min, two atomic instructions), int32 offsets unless
a tensor needs 64-bit ones, sizes and strides as kernel arguments (a metadata tensor cost a blocking
host-to-device copy). Out-of-range indices: ATen raises; that needs their min and max on the host, a
sync, so on CUDA they are skipped instead (ATen's CUDA kernel asserts on the device there).
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import check_kernel_dtype, check_same_dtype, flat_offsets, resize_out, \
    to_compute_dtype
from flagstack.ops.host import cdiv
from flagstack.ops.launch_cache import launcher
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
def float_key(value, IS_MAX: tl.constexpr):
    """Order key of float `value` (fp32 -> int32, fp64 -> int64): signed-int order is float order, -0 < +0,
    and NaN maps to the key that wins (largest for max, smallest for min). float_value inverts it."""
    if value.dtype == tl.float64:
        bits = value.to(tl.int64, bitcast=True)
        magnitude, top = 0x7FFFFFFFFFFFFFFF, 0x7FFFFFFFFFFFFFFF
    else:
        bits = value.to(tl.int32, bitcast=True)
        magnitude, top = 0x7FFFFFFF, 0x7FFFFFFF
    key = tl.where(bits < 0, bits ^ magnitude, bits)
    return tl.where(value != value, top if IS_MAX else -top - 1, key)


@triton.jit
def float_value(key, FLOAT: tl.constexpr):
    """The float whose float_key is `key` (the NaN keys decode to NaNs)."""
    magnitude = 0x7FFFFFFFFFFFFFFF if FLOAT == tl.float64 else 0x7FFFFFFF
    return tl.where(key < 0, key ^ magnitude, key).to(FLOAT, bitcast=True)


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
def _scatter_kernel(index_ptr, src_ptr, acc_ptr, count_ptr, n, sizes, index_strides, src_strides, acc_strides,
                    acc_dim_stride, dim_size, REDUCE: tl.constexpr, COUNT: tl.constexpr, KEYS: tl.constexpr,
                    RANK: tl.constexpr, FLAT: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    # sizes: index's; acc_strides[dim] is 0 (the index decides it, times acc_dim_stride).
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if WIDE:  # 64-bit offsets only where a tensor needs them (int64 division costs ~10x int32)
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    rest = offsets
    index_offsets = tl.zeros_like(offsets)
    src_offsets = tl.zeros_like(offsets)
    acc_offsets = tl.zeros_like(offsets)
    for i in tl.static_range(RANK):  # the last dim first
        coord = rest % sizes[RANK - 1 - i]
        rest = rest // sizes[RANK - 1 - i]
        index_offsets += coord * index_strides[RANK - 1 - i]
        src_offsets += coord * src_strides[RANK - 1 - i]
        acc_offsets += coord * acc_strides[RANK - 1 - i]
    if FLAT:  # index and src contiguous, of one shape: their flat offsets, provably so (vector loads)
        index_offsets = offsets
        src_offsets = offsets
    target = tl.load(index_ptr + index_offsets, mask=mask, other=0)
    value = tl.load(src_ptr + src_offsets, mask=mask)
    mask = mask & (target >= 0) & (target < dim_size)  # out of range: skipped (the host raises on CPU)
    acc_offsets += target.to(offsets.dtype) * acc_dim_stride  # in range, so the narrowing is exact
    acc_at = acc_ptr + acc_offsets
    if REDUCE == 0 or REDUCE == 2:
        tl.atomic_add(acc_at, value.to(acc_ptr.dtype.element_ty), mask=mask, sem="relaxed")
    elif REDUCE == 1:
        _atomic_multiply(acc_ptr, acc_offsets, value.to(acc_ptr.dtype.element_ty), mask)
    else:
        if KEYS:
            value = float_key(to_compute_dtype(value), REDUCE == 3)
        if REDUCE == 3:
            tl.atomic_max(acc_at, value.to(acc_ptr.dtype.element_ty), mask=mask, sem="relaxed")
        else:
            tl.atomic_min(acc_at, value.to(acc_ptr.dtype.element_ty), mask=mask, sem="relaxed")
    if COUNT:
        tl.atomic_add(count_ptr + acc_offsets, tl.full(offsets.shape, 1, tl.int32), mask=mask, sem="relaxed")


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
                   COUNT: tl.constexpr, KEYS: tl.constexpr, BLOCK: tl.constexpr):
    offsets, mask = flat_offsets(n, BLOCK)
    original = tl.load(self_ptr + offsets, mask=mask)
    acc = tl.load(acc_ptr + offsets, mask=mask)
    if KEYS:
        acc = float_value(acc, tl.float64 if acc.dtype == tl.int64 else tl.float32)
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


def _acc_dtype(dtype: torch.dtype, reduce: int) -> torch.dtype:
    """fp32 (fp64 for fp64) for floats, int64 for integers; int32 (int64) order keys for float amax/amin."""
    if dtype.is_floating_point and reduce in (REDUCES["amax"], REDUCES["amin"]):
        return torch.int64 if dtype == torch.float64 else torch.int32
    if dtype == torch.float64:
        return dtype
    return torch.float32 if dtype.is_floating_point else torch.int64


def _float_key(value: float, key_dtype: torch.dtype) -> int:
    """float_key of a (non-NaN) float, on the host: its bits as a signed int, magnitude bits flipped if negative."""
    wide = key_dtype == torch.int64  # struct, not a torch.tensor: this runs on every amax/amin call
    bits = struct.unpack("<q" if wide else "<i", struct.pack("<d" if wide else "<f", value))[0]
    return bits ^ torch.iinfo(key_dtype).max if bits < 0 else bits


def _identity(reduce: int, dtype: torch.dtype, acc_dtype: torch.dtype) -> float | int:
    if reduce == REDUCES["prod"]:
        return 1
    if reduce in (REDUCES["amax"], REDUCES["amin"]):
        sign = -1 if reduce == REDUCES["amax"] else 1
        if dtype.is_floating_point:
            return _float_key(sign * float("inf"), acc_dtype)
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
    if not index.is_cuda:  # on CUDA the kernel skips them: finding them here would cost a read and a sync
        low, high = index.aminmax()
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
    # bool: no mean anywhere; on CUDA, ATen's kernel takes bool for sum only (prod/amax/amin raise there)
    no_bool = reduce == REDUCES["mean"] or (x.is_cuda and reduce != REDUCES["sum"])
    check_kernel_dtype(f"scatter_gather_tensor_{x.device.type}_reduce_{reduce_name}", x.dtype,
                       DTYPES[1:] if no_bool else DTYPES, x.device)
    n = x.numel()
    if n == 0:
        return out
    if index.numel() == 0:
        return out.copy_(x)
    acc_dtype = _acc_dtype(x.dtype, reduce)
    keys = x.dtype.is_floating_point and not acc_dtype.is_floating_point
    acc = torch.empty(x.shape, dtype=acc_dtype, device=x.device)
    count_needed = reduce == REDUCES["mean"] or not include_self
    count = torch.zeros(x.shape, dtype=torch.int32, device=x.device) if count_needed else acc  # acc: unused
    # Launched by keys read off the arguments (launch_cache.py): Triton's binding of three launches took
    # 100-175 us of host time a call on an H200 machine's slow host, against 40-60 us of GPU time.
    launcher(_identity_kernel)(None, (cdiv(n, BLOCK),), (acc, n, _identity(reduce, x.dtype, acc_dtype)),
                               {"BLOCK": BLOCK}, num_warps=4)
    index_, src_ = (t.reshape(1) if t.dim() == 0 else t for t in (index, src))  # 0-dim: one element
    acc_strides = list(acc.stride()) or [1]
    dim_stride, acc_strides[dim] = acc_strides[dim], 0
    wide = max(sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))  # largest element offset
               for t in (index_, src_, acc)) >= 2 ** 31 - BLOCK
    m = index.numel()
    launcher(_scatter_kernel)(
        None, (cdiv(m, BLOCK),), (index_, src_, acc, count, m, tuple(index_.shape), tuple(index_.stride()),
                                  tuple(src_.stride()), tuple(acc_strides), dim_stride, (list(x.shape) or [1])[dim]),
        {"REDUCE": reduce, "COUNT": count_needed, "KEYS": keys, "RANK": index_.dim(),
         "FLAT": index_.is_contiguous() and src_.is_contiguous() and index_.shape == src_.shape, "WIDE": wide,
         "BLOCK": BLOCK}, num_warps=4)
    target = out if out.is_contiguous() else torch.empty_like(x, memory_format=torch.contiguous_format)
    launcher(_finish_kernel)(None, (cdiv(n, BLOCK),), (x.contiguous(), acc, count, target, n),
                             {"REDUCE": reduce, "INCLUDE_SELF": include_self, "COUNT": count_needed, "KEYS": keys,
                              "BLOCK": BLOCK}, num_warps=4)
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
