"""argmax and logsumexp of each row of logits [B, V] in one read: the greedy sampler's token and the
normaliser of its logprob (logprob = logit[token] - lse).

ids are exactly torch.argmax (first index of the max; a NaN counts as the max, the first NaN wins);
lse is torch.logsumexp in fp32 (all -inf -> -inf, a +inf -> +inf, a NaN -> NaN).

Each program streams a span of a row as [SUB, LANES] tiles (LANES contiguous columns per tile row).
Every lane keeps its own running state through `argmax_update` folding the tile's SUB values along
axis 0, which the blocked layout keeps inside one thread: (max, first index of it, first NaN) and
the sum of exp(x - lane max), rescaled by exp(old max - new max) when the max grows (online
logsumexp). The lanes are reduced once per span. With fewer rows than ~4 per SM each row is cut
into spans over many programs (argmax.num_splits); each span writes (max, sum relative to that max,
first index, first NaN) and a second tiny kernel combines a row's spans: the first span holding the
max gives the index, and lse = M + log(sum_i s_i * exp(m_i - M)) with M the row max.
Traffic: one read of the logits (B*V*elem bytes: 256 x 151,936 fp32 is 156 MB, ~52 us at 3.0 TB/s)
+ 16 bytes per (row, span) written and read back + 12 bytes per row written.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.argmax import NO_INDEX, argmax_result, argmax_update, num_splits, warps_for
from flagstack.ops.checks import check_tensor
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.launch_cache import launch
from flagstack.ops.registry import BenchCase, register
from flagstack.ops.softmax import LOG2E

BLOCK = 4096  # columns per iteration (SUB x LANES), as argmax's BLOCK
LOAD_BYTES = 16  # contiguous bytes per thread per tile row: one 128-bit load


@triton.jit
def _shift(m):
    """A max usable as an exp shift: an all -inf state shifts by 0 (its sums stay 0, not nan)."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _store_row(ids_ptr, lse_ptr, row, best, best_idx, nan_idx, total):
    """ids[row], lse[row] from a row's (max, its first index, first NaN, sum of exp(x - max)).

    torch's special values: any NaN -> NaN; a +inf max -> +inf (the sum is inf - inf there); all
    -inf -> -inf + log(0) = -inf."""
    _, index = argmax_result(best, best_idx, nan_idx)
    lse = tl.where(best == float("inf"), best, best + tl.log(total))
    tl.store(ids_ptr + row, index.to(tl.int64))
    tl.store(lse_ptr + row, tl.where(nan_idx != NO_INDEX, float("nan"), lse))


@triton.jit
def _span_kernel(x_ptr, ids_ptr, lse_ptr, max_ptr, sum_ptr, idx_ptr, nan_ptr, n_cols, x_row_stride, span,
                 PARTIALS: tl.constexpr, SUB: tl.constexpr, LANES: tl.constexpr):
    split, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    lo = split * span
    hi = tl.minimum(lo + span, n_cols)
    x_row = x_ptr + row * x_row_stride
    tile = tl.arange(0, SUB)[:, None] * LANES + tl.arange(0, LANES)[None, :]
    lane_best = tl.full((LANES,), float("-inf"), tl.float32)
    lane_idx = tl.full((LANES,), NO_INDEX, tl.int32)  # stays NO_INDEX in an all -inf lane (never taken)
    lane_nan = tl.full((LANES,), NO_INDEX, tl.int32)
    lane_sum = tl.zeros((LANES,), tl.float32)  # sum of exp(x - lane_best) over the lane's values
    for start in range(lo, hi, SUB * LANES):
        cols = start + tile
        x = tl.load(x_row + cols, mask=cols < hi, other=float("-inf")).to(tl.float32)
        new_best, lane_idx, lane_nan = argmax_update(x, cols, lane_best, lane_idx, lane_nan)
        shift = _shift(new_best)
        lane_sum = (lane_sum * tl.exp2((lane_best - shift) * LOG2E)  # -inf lanes: 0 * 0
                    + tl.sum(tl.exp2((x - shift[None, :]) * LOG2E), axis=0))
        lane_best = new_best
    # across lanes: the first lane index of the max is the span's first; an all -inf span answers lo
    best, best_idx, nan_idx = argmax_update(lane_best, lane_idx, tl.full((), float("-inf"), tl.float32), lo,
                                            tl.min(lane_nan, axis=0))
    total = tl.sum(lane_sum * tl.exp2((lane_best - _shift(best)) * LOG2E), axis=0)
    if PARTIALS:
        part = row * tl.num_programs(0) + split
        tl.store(max_ptr + part, best)
        tl.store(sum_ptr + part, total)
        tl.store(idx_ptr + part, best_idx)
        tl.store(nan_ptr + part, nan_idx)
    else:
        _store_row(ids_ptr, lse_ptr, row, best, best_idx, nan_idx, total)


@triton.jit(do_not_specialize=["n_splits"])  # varies with rows
def _combine_kernel(max_ptr, sum_ptr, idx_ptr, nan_ptr, ids_ptr, lse_ptr, n_splits, SPLITS: tl.constexpr):
    """One row's spans: the first span holding the max gives the index; sums rescale to the row max."""
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, SPLITS)
    mask = s < n_splits
    part = row * n_splits + s
    span_max = tl.load(max_ptr + part, mask=mask, other=float("-inf"))
    span_idx = tl.load(idx_ptr + part, mask=mask, other=NO_INDEX)
    nan_idx = tl.min(tl.load(nan_ptr + part, mask=mask, other=NO_INDEX), axis=0)
    best, best_idx, nan_idx = argmax_update(span_max, span_idx, tl.full((), float("-inf"), tl.float32), 0, nan_idx)
    span_sum = tl.load(sum_ptr + part, mask=mask, other=0.0)
    total = tl.sum(span_sum * tl.exp2((span_max - _shift(best)) * LOG2E), axis=0)
    _store_row(ids_ptr, lse_ptr, row, best, best_idx, nan_idx, total)


def tile_shape(n_cols: int, elem_size: int, block: int = BLOCK) -> tuple[int, int]:
    """(SUB, LANES) of a tile of at most `block` columns: LANES wide enough for one 16-byte load per
    thread at warps_for(block) warps, capped by the row (short rows: no idle lanes)."""
    block = min(block, next_power_of_2(n_cols))
    lanes = min(block, 32 * warps_for(block) * max(1, LOAD_BYTES // elem_size))
    return block // lanes, lanes


def argmax_logsumexp_triton(logits: torch.Tensor, splits: int | None = None,
                            block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax, fp32 logsumexp) of each row of 2-D logits with the Triton kernels; `splits` programs
    per row (default: argmax.num_splits) and `block` columns per iteration are tuning knobs."""
    n_rows, n_cols = logits.shape
    ids = torch.empty(n_rows, dtype=torch.int64, device=logits.device)
    lse = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    if n_rows == 0:
        return ids, lse
    sub, lanes = tile_shape(n_cols, logits.element_size(), block)
    step = sub * lanes
    splits = splits or num_splits(n_rows, n_cols, logits.device, step)
    span = cdiv(cdiv(n_cols, splits), step) * step  # whole tiles per span
    splits = cdiv(n_cols, span)
    warps = warps_for(step)
    if splits == 1:
        launch(_span_kernel, (1, n_rows), logits, ids, lse, lse, lse, ids, ids, n_cols, logits.stride(0), span,
               PARTIALS=False, SUB=sub, LANES=lanes, num_warps=warps)
        return ids, lse
    part_max, part_sum = torch.empty(2, n_rows, splits, dtype=torch.float32, device=logits.device).unbind(0)
    part_id, part_nan = torch.empty(2, n_rows, splits, dtype=torch.int32, device=logits.device).unbind(0)
    launch(_span_kernel, (splits, n_rows), logits, ids, lse, part_max, part_sum, part_id, part_nan, n_cols,
           logits.stride(0), span, PARTIALS=True, SUB=sub, LANES=lanes, num_warps=warps)
    # one compiled variant for every batch size up to a 262,144-column vocab: a SPLITS that followed the
    # row count compiled anew for each new batch size (~0.7 s lost in an H100 engine run)
    launch(_combine_kernel, (n_rows,), part_max, part_sum, part_id, part_nan, ids, lse, splits,
           SPLITS=max(64, next_power_of_2(splits)))
    return ids, lse


def argmax_logsumexp_reference(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first index of each row's max, NaN counting as the max; fp32 logsumexp of each row) of 2-D logits."""
    return torch.argmax(logits, -1), torch.logsumexp(logits.float(), -1)


def _validate(logits: torch.Tensor) -> None:
    check_tensor("logits", logits, min_dim=2, max_dim=2)
    if logits.shape[1] == 0:
        raise ValueError(f"logits must have at least one column, got shape {tuple(logits.shape)}")
    if logits.shape[1] > 1 and logits.stride(1) != 1:
        raise ValueError(f"logits must have a unit stride on its last dim, got strides {logits.stride()}")


def _bench_case(rows: int, dtype: torch.dtype, device: str, vocab: int = 151936) -> BenchCase:
    x = torch.randn(rows, vocab, dtype=dtype, device=device)
    return BenchCase((x,), bytes_moved=x.numel() * x.element_size() + rows * 12)


argmax_logsumexp = register("argmax_logsumexp", reference=argmax_logsumexp_reference,
                            triton=argmax_logsumexp_triton, validate=_validate, bench_case=_bench_case)
