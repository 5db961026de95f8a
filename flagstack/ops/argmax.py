"""argmax along one dim (or over everything), exact like torch: the first index of the max, and a NaN
counts as larger than everything (the first NaN wins).

One program streams a span of a row in blocks keeping (best value, its first index, first NaN
index); traffic is one read of x. With fewer rows than SMs each row is cut into spans over many
programs, and a second tiny kernel picks the winning span per row (spans are in order, so the
first best span holds the first index). `argmax_update` is shared with the sampler.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.checks import FLOAT_DTYPES, check_tensor, rows_view
from flagstack.ops.host import cdiv, next_power_of_2, sm_count
from flagstack.ops.launch_cache import launch
from flagstack.ops.registry import BenchCase, register, register_aten

NO_INDEX = tl.constexpr(2147483647)
BLOCK, WARPS = 4096, 8


@triton.jit
def argmax_update(x, cols, best, best_idx, nan_idx):
    """Fold a block of fp32 values at int32 `cols` (masked lanes: -inf) into the running state."""
    is_nan = x != x
    nan_idx = tl.minimum(nan_idx, tl.min(tl.where(is_nan, cols, NO_INDEX), axis=0))
    x = tl.where(is_nan, float("-inf"), x)
    block_max = tl.max(x, axis=0)
    block_idx = tl.min(tl.where(x == block_max, cols, NO_INDEX), axis=0)
    take = block_max > best  # strict: an equal later block keeps the earlier index
    return tl.where(take, block_max, best), tl.where(take, block_idx, best_idx), nan_idx


@triton.jit
def argmax_result(best, best_idx, nan_idx):
    """(value, index) of a finished scan: the first NaN if there was one."""
    has_nan = nan_idx != NO_INDEX
    return tl.where(has_nan, float("nan"), best), tl.where(has_nan, nan_idx, best_idx)


@triton.jit
def _lane_update(x, cols, valid, best, best_idx, nan_idx):
    """Per-lane running state (no cross-lane work): each lane keeps its first max and first NaN.

    A lane sees increasing columns, so a strict > keeps its earliest index; its first valid value is
    always taken (an all -inf lane still answers an index)."""
    is_nan = x != x
    nan_idx = tl.minimum(nan_idx, tl.where(is_nan & valid, cols, NO_INDEX))
    take = valid & (x == x) & ((x > best) | (best_idx == NO_INDEX))
    return tl.where(take, x, best), tl.where(take, cols, best_idx), nan_idx


@triton.jit
def _argmax_kernel(x_ptr, val_ptr, idx_ptr, n_cols, x_row_stride, span, WRITE_VALUE: tl.constexpr,
                   LANES: tl.constexpr, BLOCK: tl.constexpr):
    # LANES: the loop only streams, each lane folding its own elements, and the three cross-lane
    # reductions (max, first index of it, first NaN) run once per span. On an H100 that took 256
    # rows x 151,936 (split spans) from 72 to 55 us, but made 4096+ unsplit rows ~15% slower than
    # reducing every block, so it is used for split spans only.
    split, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    n_splits = tl.num_programs(0)
    lo = split * span
    hi = tl.minimum(lo + span, n_cols)
    x_row = x_ptr + row * x_row_stride
    if LANES:
        lane_best = tl.full((BLOCK,), float("-inf"), tl.float32)
        lane_idx = tl.full((BLOCK,), NO_INDEX, tl.int32)
        lane_nan = tl.full((BLOCK,), NO_INDEX, tl.int32)
        for start in range(lo, hi, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            valid = cols < hi
            x = tl.load(x_row + cols, mask=valid, other=float("-inf")).to(tl.float32)
            lane_best, lane_idx, lane_nan = _lane_update(x, cols, valid, lane_best, lane_idx, lane_nan)
        best = tl.max(lane_best, axis=0)
        best_idx = tl.min(tl.where((lane_best == best) & (lane_idx != NO_INDEX), lane_idx, NO_INDEX), axis=0)
        best_idx = tl.where(best_idx == NO_INDEX, lo, best_idx)  # only NaNs: the NaN index wins below
        nan_idx = tl.min(lane_nan, axis=0)
    else:
        best = tl.full((), float("-inf"), tl.float32)
        best_idx = lo  # an all -inf span answers its first index
        nan_idx = tl.full((), NO_INDEX, tl.int32)
        for start in range(lo, hi, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(x_row + cols, mask=cols < hi, other=float("-inf")).to(tl.float32)
            best, best_idx, nan_idx = argmax_update(x, cols, best, best_idx, nan_idx)
    value, index = argmax_result(best, best_idx, nan_idx)
    if WRITE_VALUE:
        tl.store(val_ptr + row * n_splits + split, value)
    tl.store(idx_ptr + row * n_splits + split, index.to(tl.int64))


@triton.jit(do_not_specialize=["n_splits"])  # varies with rows
def argmax_combine_kernel(val_ptr, idx_ptr, out_ptr, n_splits, SPLITS: tl.constexpr):
    """out[row] = idx[row, s] for the split s holding the row's first NaN, else its first max."""
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, SPLITS)
    v = tl.load(val_ptr + row * n_splits + s, mask=s < n_splits, other=float("-inf"))
    best, best_idx, nan_idx = argmax_update(v, s, tl.full((), float("-inf"), tl.float32), 0,
                                            tl.full((), NO_INDEX, tl.int32))
    _, pick = argmax_result(best, best_idx, nan_idx)
    tl.store(out_ptr + row, tl.load(idx_ptr + row * n_splits + pick))


def num_splits(n_rows: int, n_cols: int, device: torch.device, block: int = BLOCK) -> int:
    """How many programs share a row: enough for ~4 programs per SM when rows are few (one
    program per SM streaming a 304 KB row was 0.88x torch.compile at 256 rows on an H100)."""
    sms = sm_count(device, cpu=4)
    if n_rows >= 4 * sms:
        return 1
    return max(1, min(cdiv(n_cols, block), cdiv(4 * sms, n_rows)))


def warps_for(block: int) -> int:
    """~16 elements per thread, WARPS at most."""
    return max(1, min(WARPS, block // 512))


def argmax_rows(rows: torch.Tensor, splits: int | None = None, block: int = BLOCK) -> torch.Tensor:
    """First index of the max of each row of a [R, N] tensor (N > 0) as int64 [R]."""
    n_rows, n_cols = rows.shape
    if n_cols == 0:
        raise ValueError("rows must have at least one column (argmax of no elements)")
    out = torch.empty(n_rows, dtype=torch.int64, device=rows.device)
    if n_rows == 0:
        return out
    block = min(block, next_power_of_2(n_cols))  # short rows: no idle lanes
    splits = splits or num_splits(n_rows, n_cols, rows.device, block)
    span = cdiv(cdiv(n_cols, splits), block) * block
    splits = cdiv(n_cols, span)
    if splits == 1:
        launch(_argmax_kernel, (1, n_rows), rows, out, out, n_cols, rows.stride(0), span, WRITE_VALUE=False,
               LANES=False, BLOCK=block, num_warps=warps_for(block))
        return out
    values = torch.empty(n_rows, splits, dtype=torch.float32, device=rows.device)
    indices = torch.empty(n_rows, splits, dtype=torch.int64, device=rows.device)
    launch(_argmax_kernel, (splits, n_rows), rows, values, indices, n_cols, rows.stride(0), span, WRITE_VALUE=True,
           LANES=True, BLOCK=block, num_warps=warps_for(block))
    launch(argmax_combine_kernel, (n_rows,), values, indices, out, splits, SPLITS=next_power_of_2(splits))
    return out


def argmax_triton(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Index of the first max along `dim` (None: of the flattened x) with the Triton kernel."""
    if dim is None:
        out = argmax_rows(x.reshape(1, -1))
        return out.reshape([1] * x.dim()) if keepdim else out.reshape(())
    if x.dim() == 0:
        return torch.zeros((), dtype=torch.int64, device=x.device)
    dim = dim % x.dim()
    moved = x if dim == x.dim() - 1 else x.movedim(dim, -1)  # no host call where it changes nothing
    out = argmax_rows(rows_view(moved))
    if moved.dim() != 2:
        out = out.view(moved.shape[:-1])
    return out.unsqueeze(dim) if keepdim else out


def argmax_reference(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Index of the first max along `dim` (None: of the flattened x); NaN counts as the max (torch.argmax)."""
    return torch.argmax(x, dim=dim, keepdim=keepdim)


def _validate(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> None:
    check_tensor("x", x, min_dim=0)
    if dim is None:
        if x.numel() == 0:
            raise ValueError("x must not be empty when dim is None (argmax of no elements)")
        return
    ndim = max(x.dim(), 1)
    if not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"dim must be None or an int in [{-ndim}, {ndim}), got {dim!r}")
    if x.dim() > 0 and x.shape[dim] == 0:
        raise ValueError(f"x must have a non-empty dim {dim} to reduce, got shape {tuple(x.shape)}")


def _bench_case(rows: int, dtype: torch.dtype, device: str, vocab: int = 151936) -> BenchCase:
    x = torch.randn(rows, vocab, dtype=dtype, device=device)
    return BenchCase((x, -1), bytes_moved=x.numel() * x.element_size() + rows * 8)


def _aten_argmax(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """aten::argmax for float tensors; other dtypes and empty reductions go to ATen's own kernel."""
    empty_reduction = x.numel() == 0 if dim is None else (x.dim() > 0 and x.shape[dim] == 0)
    if x.dtype not in FLOAT_DTYPES or empty_reduction:
        return NotImplemented
    return argmax_triton(x, dim, keepdim)


argmax = register("argmax", reference=argmax_reference, triton=argmax_triton, flaggems="ops.argmax",
                  validate=_validate, bench_case=_bench_case)
register_aten("aten::argmax", _aten_argmax)
