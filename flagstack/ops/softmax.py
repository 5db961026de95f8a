"""softmax and log_softmax along one dim, accumulated in fp32, with three kernels by row shape.

- narrow rows (<= 16384 columns): the whole row sits in registers; one read, one write.
- wide rows, many of them (a vocab of 151,936 at >= one row per SM): a few programs per SM walk
  rows. Pass 1 streams a row once keeping a running max and a rescaled running sum (online
  softmax); pass 2 streams it again, in reverse order (what pass 1 read last is re-read first),
  and writes. Traffic from HBM: 1 read + 1 write of the row plus the part of pass 2 that misses
  L2. One program per row (~1000 rows of 304 KB resident) missed it almost entirely: 65% of copy
  speed on an H100. The grid is 2 programs per SM, but a 32768-element tile takes the whole
  register file (16 warps x 128 registers per thread, offline compile for sm_90), so one program per
  SM runs at a time: 132 rows (40 MB) in flight, the second half of the grid after the first.
  L2 eviction hints (keep pass 1's reads, stream pass 2's reads and writes out) and 32768-element
  blocks raised this path from 64% to 81-86% of copy speed on the H100. softmax then multiplies by
  1 / sum instead of dividing each element (an IEEE fp32 division is ~10 instructions) and runs its
  tile at 32 warps: 4096 x 151,936 bf16 8065 -> 7837 -> 7665 us, 85.8% of copy speed (log_softmax,
  with no division, 7648 us at 16 warps; not timed at 32). Capping registers so two programs share
  an SM, or loading the next block before reducing this one, were slower (8523-9403 us). The
  narrow and split kernels finish softmax with the same reciprocal (not timed separately).
- wide rows, few of them (fewer rows than SMs, e.g. one decode step's logits): each row is cut into
  chunks over many programs. Stage 1 writes each chunk's (max, sum); stage 2 combines a row's
  partials and writes its chunk. Same 2 reads + 1 write, but the whole GPU works on a single row.
Other dims are moved last (a copy when they are not already last). exp is exp2 of a scaled argument.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.checks import FLOAT_DTYPES, check_tensor, rows_view
from flagstack.ops.host import cdiv, next_power_of_2, sm_count
from flagstack.ops.launch_cache import launch
from flagstack.ops.registry import BenchCase, register, register_aten

LOG2E = tl.constexpr(1.4426950408889634)
NARROW_MAX = 16384  # widest row kept whole in registers (fp32: 32 values per thread at 16 warps)
# wide rows: elements per iteration, warps per program (softmax, log_softmax), programs per SM (rows in
# flight: the more, the more loads in flight, the less of each row still in L2 for pass 2; see the
# module docstring)
LOOP_BLOCK, LOOP_PROGRAMS_PER_SM = 32768, 2
LOOP_WARPS = {False: 32, True: 16}
# L2 eviction hints (pass 1 loads, pass 2 loads and stores): pass 1 marks the row to stay in L2 for
# pass 2, which streams it out and keeps its output from evicting the rows still to be re-read
LOOP_POLICIES = ("evict_last", "evict_first")
SPLIT_BLOCK = 4096  # few wide rows: columns per program


@triton.jit
def _safe_max(m):
    """A row max usable as a shift: an all -inf row shifts by 0 (its result is then 0/0 = nan, as torch)."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _finish(x, m, s, LOG: tl.constexpr):
    """softmax = exp(x - m) / s as exp2(x log2 e - m log2 e) * (1 / s): one FMA, one ex2 and one multiply
    per element; log_softmax = (x - m) - log(s). From the row max m and sum s."""
    if LOG:
        return (x - m) - tl.log(s)
    return tl.exp2(x * LOG2E - m * LOG2E) * (1.0 / s)


@triton.jit
def _narrow_kernel(x_ptr, y_ptr, n_rows, n_cols, x_row_stride, y_row_stride, LOG: tl.constexpr,
                   ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    rows64 = rows.to(tl.int64)[:, None]
    x = tl.load(x_ptr + rows64 * x_row_stride + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
    m = _safe_max(tl.max(x, axis=1))[:, None]
    s = tl.sum(tl.exp2((x - m) * LOG2E), axis=1)[:, None]
    tl.store(y_ptr + rows64 * y_row_stride + cols[None, :], _finish(x, m, s, LOG).to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _online_update(x, m, s):
    """Fold a block into the running (max, sum of exp(x - max)); the block's own max is one reduction."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    shift = _safe_max(m_new)
    s = s * tl.exp2((m - shift) * LOG2E) + tl.sum(tl.exp2((x - shift) * LOG2E), axis=0)
    return m_new, s


@triton.jit
def _wide_kernel(x_ptr, y_ptr, n_rows, n_cols, x_row_stride, y_row_stride, LOG: tl.constexpr,
                 BLOCK: tl.constexpr, PASS1_POLICY: tl.constexpr, PASS2_POLICY: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    n_blocks = tl.cdiv(n_cols, BLOCK)
    # persistent: rows in flight = grid size; an int64 row keeps row * stride from overflowing
    for row in range(tl.program_id(0).to(tl.int64), n_rows, tl.num_programs(0)):
        x_row = x_ptr + row * x_row_stride
        y_row = y_ptr + row * y_row_stride
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        for start in range(0, n_cols, BLOCK):
            x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=float("-inf"),
                        eviction_policy=PASS1_POLICY).to(tl.float32)
            m, s = _online_update(x, m, s)
        m = _safe_max(m)
        for i in range(0, n_blocks):
            start = (n_blocks - 1 - i) * BLOCK  # last block first: it is still in L2
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=float("-inf"), eviction_policy=PASS2_POLICY)
            tl.store(y_row + start + cols, _finish(x.to(tl.float32), m, s, LOG).to(y_ptr.dtype.element_ty),
                     mask=mask, eviction_policy=PASS2_POLICY)


@triton.jit
def _split_stats_kernel(x_ptr, m_ptr, s_ptr, n_cols, x_row_stride, n_chunks, BLOCK: tl.constexpr):
    chunk, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
    m, s = _online_update(x, tl.full((), float("-inf"), tl.float32), tl.zeros((), tl.float32))
    tl.store(m_ptr + row * n_chunks + chunk, m)
    tl.store(s_ptr + row * n_chunks + chunk, s)


@triton.jit
def _split_write_kernel(x_ptr, y_ptr, m_ptr, s_ptr, n_cols, x_row_stride, y_row_stride, n_chunks,
                        LOG: tl.constexpr, BLOCK: tl.constexpr, CHUNKS: tl.constexpr):
    chunk, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    parts = tl.arange(0, CHUNKS)
    part_mask = parts < n_chunks
    pm = tl.load(m_ptr + row * n_chunks + parts, mask=part_mask, other=float("-inf"))
    ps = tl.load(s_ptr + row * n_chunks + parts, mask=part_mask, other=0.0)
    m = _safe_max(tl.max(pm, axis=0))
    s = tl.sum(ps * tl.exp2((pm - m) * LOG2E), axis=0)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=float("-inf")).to(tl.float32)
    tl.store(y_ptr + row * y_row_stride + cols, _finish(x, m, s, LOG).to(y_ptr.dtype.element_ty), mask=mask)


def _launch_narrow(x: torch.Tensor, y: torch.Tensor, log: bool) -> None:
    n_rows, n_cols = x.shape
    block_n = next_power_of_2(n_cols)
    rows_per_prog = max(1, min(32, 2048 // block_n))  # short rows: several per program
    warps = min(16, max(1, rows_per_prog * block_n // 512))
    launch(_narrow_kernel, (cdiv(n_rows, rows_per_prog),),
           x, y, n_rows, n_cols, x.stride(0), y.stride(0), LOG=log, ROWS=rows_per_prog, BLOCK_N=block_n,
           num_warps=warps)


def _launch_wide(x: torch.Tensor, y: torch.Tensor, log: bool, block: int = LOOP_BLOCK) -> None:
    programs = min(x.shape[0], LOOP_PROGRAMS_PER_SM * sm_count(x.device, cpu=4))
    launch(_wide_kernel, (programs,), x, y, x.shape[0], x.shape[1], x.stride(0), y.stride(0), LOG=log, BLOCK=block,
           PASS1_POLICY=LOOP_POLICIES[0], PASS2_POLICY=LOOP_POLICIES[1], num_warps=LOOP_WARPS[log])


def _launch_split(x: torch.Tensor, y: torch.Tensor, log: bool, block: int = SPLIT_BLOCK) -> None:
    n_rows, n_cols = x.shape
    n_chunks = cdiv(n_cols, block)
    part_max, part_sum = torch.empty(2, n_rows, n_chunks, dtype=torch.float32, device=x.device).unbind(0)
    grid = (n_chunks, n_rows)
    warps = min(16, max(1, block // 512))
    launch(_split_stats_kernel, grid, x, part_max, part_sum, n_cols, x.stride(0), n_chunks, BLOCK=block,
           num_warps=warps)
    launch(_split_write_kernel, grid, x, y, part_max, part_sum, n_cols, x.stride(0), y.stride(0), n_chunks, LOG=log,
           BLOCK=block, CHUNKS=next_power_of_2(n_chunks), num_warps=warps)


def _softmax_triton(x: torch.Tensor, dim: int, dtype: torch.dtype | None, log: bool) -> torch.Tensor:
    if x.dim() == 0:
        return _softmax_triton(x.reshape(1), 0, dtype, log).reshape(())
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)
    dim = dim % x.dim()
    last = dim == x.dim() - 1
    moved = x if last else x.movedim(dim, -1)  # host calls skipped where they change nothing (one-row calls)
    rows = rows_view(moved)
    out = torch.empty(rows.shape, dtype=dtype or x.dtype, device=x.device)
    if rows.shape[1] <= NARROW_MAX:
        _launch_narrow(rows, out, log)
    elif rows.shape[0] >= sm_count(x.device, cpu=4):
        _launch_wide(rows, out, log)
    else:
        _launch_split(rows, out, log)
    if rows is not moved:
        out = out.view(moved.shape)
    return out if last else out.movedim(-1, dim).contiguous()


def softmax_triton(x: torch.Tensor, dim: int = -1, dtype: torch.dtype | None = None) -> torch.Tensor:
    """softmax of x along `dim` with the Triton kernels, in fp32, output in `dtype` (default x's)."""
    return _softmax_triton(x, dim, dtype, log=False)


def log_softmax_triton(x: torch.Tensor, dim: int = -1, dtype: torch.dtype | None = None) -> torch.Tensor:
    """log_softmax of x along `dim` with the Triton kernels, in fp32, output in `dtype` (default x's)."""
    return _softmax_triton(x, dim, dtype, log=True)


def softmax_reference(x: torch.Tensor, dim: int = -1, dtype: torch.dtype | None = None) -> torch.Tensor:
    """softmax of x along `dim`, computed in fp32, output in `dtype` (default x's)."""
    return torch.softmax(x.float(), dim).to(dtype or x.dtype)


def log_softmax_reference(x: torch.Tensor, dim: int = -1, dtype: torch.dtype | None = None) -> torch.Tensor:
    """log_softmax of x along `dim`, computed in fp32, output in `dtype` (default x's)."""
    return torch.log_softmax(x.float(), dim).to(dtype or x.dtype)


def _validate(x: torch.Tensor, dim: int = -1, dtype: torch.dtype | None = None) -> None:
    check_tensor("x", x, min_dim=0)
    if not isinstance(dim, int) or not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
        raise ValueError(f"dim must be an int in [{-max(x.dim(), 1)}, {max(x.dim(), 1)}), got {dim!r}")
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be None or one of float16, bfloat16, float32, got {dtype}")


def _bench_case(rows: int, dtype: torch.dtype, device: str, vocab: int = 151936) -> BenchCase:
    x = torch.randn(rows, vocab, dtype=dtype, device=device)
    return BenchCase((x, -1), bytes_moved=2 * x.numel() * x.element_size())


def _aten_adapter(log: bool):
    """ATen's _softmax/_log_softmax(self, dim, half_to_float); other dtypes go to ATen's own kernel."""
    def adapter(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
        if x.dtype not in FLOAT_DTYPES or (half_to_float and x.dtype == torch.float32):
            return NotImplemented
        return _softmax_triton(x, dim, torch.float32 if half_to_float else None, log)
    return adapter


# No flaggems= path: FlagGems' softmax/log_softmax take ATen's (x, dim, half_to_float), not our dtype
# argument (bench/ops.py adapts them for the timings).
softmax = register("softmax", reference=softmax_reference, triton=softmax_triton,
                   validate=_validate, bench_case=_bench_case)
log_softmax = register("log_softmax", reference=log_softmax_reference, triton=log_softmax_triton,
                       validate=_validate, bench_case=_bench_case)
register_aten("aten::_softmax", _aten_adapter(log=False))
register_aten("aten::_log_softmax", _aten_adapter(log=True))
