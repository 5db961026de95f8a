"""svd of batches of small real matrices (torch.linalg.svd, torch.svd, linalg.svdvals through
aten::_linalg_svd[.U]): one-sided Jacobi, one matrix per program, everything in registers.

For A [m, n] (m >= n; a wide A is done as A^T with U and V swapped) the columns of A are rotated in pairs
until they are mutually orthogonal: A V = U S, V the product of the rotations. The pairs of a step are
disjoint (round-robin order: n - 1 steps make a sweep that meets every pair once), so a whole step is
vector work: each column reads its partner (tl.gather), the pair's norms and dot product give the
rotation (c, s) that zeroes the dot product, and both columns of A and of V are rotated at once; the
norms are updated by the rotation (|a_p|^2 - t a_p.a_q) and recomputed each sweep, so a step costs
one column reduction.
Sweeps repeat until no pair is further from orthogonal than the dtype's epsilon, relative to the two
norms (high relative accuracy, unlike an eigensolver on A^T A). Then S_j = |a_j|, U_j = a_j / S_j,
sorted by decreasing S; the columns U lacks (zero singular values; the extra m - n of full_matrices)
are completed by Gram-Schmidt against the others (no pass at full rank), so U is orthonormal whatever the rank.
Work per matrix: ~8 sweeps x (n - 1) steps of O(mn) each; 512 x 32x32 runs 512 independent programs.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from flagstack.ops.challenge.pointwise import aten_dtype_name, check_same_dtype, resize_out
from flagstack.ops.host import next_power_of_2
from flagstack.ops.registry import BenchCase, register, register_aten

DTYPES = (torch.float32, torch.float64)  # real dtypes; complex inputs go to ATen
MAX_DIM = 64  # largest matrix side kept in registers
MAX_SWEEPS = tl.constexpr(30)


@triton.jit
def _gather_columns(x, source):
    """x[:, source[j]] for every column j."""
    return tl.gather(x, tl.broadcast_to(source[None, :], x.shape), axis=1)


@triton.jit
def _svd_kernel(a_ptr, u_ptr, s_ptr, v_ptr, M, N, a_sb, a_sm, a_sn, u_sb, u_sm, u_sn, s_sb, v_sb, v_sm, v_sn,
                tol, rank_tol, fill_tol, COMPUTE_UV: tl.constexpr, U_COLS, BM: tl.constexpr, BN: tl.constexpr):
    """One matrix: S [N] and, if COMPUTE_UV, U [M, U_COLS] and V [N, N] (V, not V^H)."""
    b = tl.program_id(0).to(tl.int64)
    rows, cols = tl.arange(0, BM)[:, None], tl.arange(0, BN)[None, :]
    col = tl.arange(0, BN)
    A = tl.load(a_ptr + b * a_sb + rows * a_sm + cols * a_sn, mask=(rows < M) & (cols < N), other=0)
    V = tl.where(col[:, None] == cols, 1.0, 0.0).to(A.dtype)
    sweep = 0
    off = tl.full((), float("inf"), tl.float32)
    while (sweep < MAX_SWEEPS) & (off > tol):
        norm = tl.sum(A * A, axis=0)  # exact at each sweep's start, updated by the rotations within it
        worst = tl.zeros([BN], tl.float32)  # per column: the largest |cos| between a pair met this sweep
        for r in range(0, BN - 1):
            # round r of a round-robin over BN columns (padding ones are zero: never rotated):
            # column BN-1 meets r, the others pair as (r + k, r - k) mod BN - 1
            partner = tl.where(col == BN - 1, r, tl.where(col == r, BN - 1, (2 * r - col + BN - 1) % (BN - 1)))
            other = _gather_columns(A, partner)
            dot = tl.sum(A * other, axis=0)
            norm_other = tl.gather(norm, partner, axis=0)
            first = col < partner  # the pair's p column (the q column is its partner)
            alpha, beta = tl.where(first, norm, norm_other), tl.where(first, norm_other, norm)
            scale = tl.sqrt(alpha * beta)
            rotate = tl.abs(dot) > tol * scale
            worst = tl.maximum(worst, tl.where(rotate, tl.abs(dot) / scale, 0.0).to(tl.float32))
            zeta = (beta - alpha) / (2.0 * tl.where(rotate, dot, 1.0))
            t = tl.where(zeta >= 0, 1.0, -1.0) / (tl.abs(zeta) + tl.sqrt(1.0 + zeta * zeta))
            t = tl.where(rotate, t, 0.0)
            c = 1.0 / tl.sqrt(1.0 + t * t)
            s = tl.where(first, -c * t, c * t)  # a_p' = c a_p - s a_q, a_q' = s a_p + c a_q
            A = c[None, :] * A + s[None, :] * other
            norm = tl.where(first, alpha - t * dot, beta + t * dot)  # |a_p'|^2 and |a_q'|^2
            if COMPUTE_UV:
                V = c[None, :] * V + s[None, :] * _gather_columns(V, partner)
        off = tl.max(worst, axis=0)
        sweep += 1
    sigma = tl.sqrt(tl.sum(A * A, axis=0))
    # sort by decreasing sigma (ties by index): rank of each column, then the column each slot takes
    ahead = (sigma[None, :] > sigma[:, None]) | ((sigma[None, :] == sigma[:, None]) & (cols < col[:, None]))
    rank = tl.sum(tl.where(ahead & (cols < N), 1, 0), axis=1)
    source = tl.sum(tl.where((rank[:, None] == cols) & (col[:, None] < N), col[:, None], 0), axis=0)
    source = tl.where(col < N, source, col)  # padding slots keep their own (zero) column
    sigma = tl.gather(sigma, source, axis=0)
    tl.store(s_ptr + b * s_sb + col, sigma, mask=col < N)
    if COMPUTE_UV:
        V = _gather_columns(V, source)
        tl.store(v_ptr + b * v_sb + col[:, None] * v_sm + cols * v_sn, V, mask=(col[:, None] < N) & (cols < N))
        # U = a_j / sigma_j where sigma_j stands above the rounding noise; the other columns (zero singular
        # values, and the extra ones of full_matrices) by Gram-Schmidt, twice, of e_0, e_1, ... against U
        found = (sigma > tl.max(sigma, axis=0) * rank_tol) & (col < N)
        U = _gather_columns(A, source) * tl.where(found, 1.0 / tl.where(found, sigma, 1.0), 0.0)[None, :]
        i = 0
        while (i < M) & (tl.sum((found & (col < U_COLS)).to(tl.int32), axis=0) < U_COLS):  # full rank: no pass
            e = tl.where(tl.arange(0, BM) == i, 1.0, 0.0).to(A.dtype)
            for _ in tl.static_range(2):
                e = e - tl.sum(U * tl.sum(U * e[:, None], axis=0)[None, :], axis=1)
            length = tl.sqrt(tl.sum(e * e, axis=0))
            slot = tl.min(tl.where(~found & (col < U_COLS), col, BN), axis=0)
            # e_i still has a direction of its own: it fills the slot (none when slot = BN: all filled).
            # One pass over e_0..e_{M-1} fills every slot only if fill_tol < 1/sqrt(M): an e_i passed over keeps
            # a residual <= fill_tol, and the residuals' squares sum to the unfilled dimension (>= 1) if any
            # slot is left. A fixed 0.5 left U's last column zero at M = 50 (a 20x50 A; H100 test_large).
            slot = tl.where(length > fill_tol, slot, BN)
            U = tl.where(cols == slot, (e / length)[:, None], U)
            found = found | (col == slot)
            i += 1
        tl.store(u_ptr + b * u_sb + rows * u_sm + cols * u_sn, U, mask=(rows < M) & (cols < U_COLS))


def _check(A: torch.Tensor) -> None:
    """ATen's checks (RuntimeError); LinAlgError for NaN input, as ATen's CPU kernel."""
    if A.dim() < 2:
        raise RuntimeError("linalg.svd: The input tensor A must have at least 2 dimensions.")
    if not (A.dtype.is_floating_point or A.dtype.is_complex):
        raise RuntimeError(f"linalg.svd: Expected a floating point or complex tensor as input. Got "
                           f"{aten_dtype_name(A.dtype)}")
    if A.dtype not in DTYPES:
        raise NotImplementedError(f'"linalg_svd_{A.device.type}" not implemented for \'{aten_dtype_name(A.dtype)}\'')
    if max(A.shape[-2:]) > MAX_DIM:
        raise ValueError(f"A's matrices must be at most {MAX_DIM}x{MAX_DIM} for the Jacobi kernel, got "
                         f"{tuple(A.shape[-2:])}")
    if A.numel() and bool(torch.isnan(A).any()):  # ATen's check (+-inf passes it and gives NaNs)
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge because the input matrix "
                                       "contained non-finite values.")


def _fill(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return result
    check_same_dtype(result.dtype, out)
    return resize_out(out, result.shape).copy_(result)


def _warps(tile: int) -> int:
    """Small tiles on one warp: the column gathers and reductions of every step stay warp-local."""
    return 1 if tile <= 1024 else 2 if tile <= 4096 else 4


def svd_triton(A: torch.Tensor, full_matrices: bool = True, compute_uv: bool = True, *, driver: str | None = None,
               U: torch.Tensor | None = None, S: torch.Tensor | None = None,
               Vh: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A [..., m, n] = U diag(S) Vh with S decreasing; U [..., m, m or k], Vh [..., n or k, n] (k = min(m, n))
    by full_matrices; without compute_uv, U and Vh are empty. `driver` is accepted and ignored."""
    _check(A)
    *batch, m, n = A.shape
    wide = m < n
    work = A.mT if wide else A  # [.., M, N] with M >= N
    M, N = work.shape[-2:]
    u_cols = M if full_matrices else N
    count = torch.Size(batch).numel()
    flat = work.reshape(count, M, N)
    s_out = torch.empty(count, N, dtype=A.dtype, device=A.device)
    u_out = torch.empty(count, M, u_cols if compute_uv else 0, dtype=A.dtype, device=A.device)
    v_out = torch.empty(count, N, N if compute_uv else 0, dtype=A.dtype, device=A.device)
    if count and M:
        bn = max(2, next_power_of_2(max(N, u_cols if compute_uv else 1)))
        bm = max(bn, next_power_of_2(M))
        eps = torch.finfo(A.dtype).eps
        _svd_kernel[(count,)](flat, u_out, s_out, v_out, M, N, *flat.stride(), *u_out.stride(), s_out.stride(0),
                              *v_out.stride(), 4 * eps, M * eps, 0.5 / math.sqrt(M), COMPUTE_UV=compute_uv,
                              U_COLS=u_cols, BM=bm, BN=bn, num_warps=_warps(bm * bn))
    elif compute_uv and M:  # no columns: U is any orthonormal basis (ATen: the identity)
        u_out.copy_(torch.eye(M, u_cols, dtype=A.dtype, device=A.device).expand_as(u_out))
    s_out = s_out.view(*batch, N)
    if not compute_uv:
        empty = A.new_empty(0)
        return _fill(empty, U), _fill(s_out, S), _fill(empty.clone(), Vh)
    u_work, v_work = u_out.view(*batch, M, u_cols), v_out.view(*batch, N, N)
    u_final, vh_final = (v_work, u_work.mT) if wide else (u_work, v_work.mT)
    return _fill(u_final.contiguous(), U), _fill(s_out, S), _fill(vh_final.contiguous(), Vh)


def _linalg_svd_aten(A: torch.Tensor, full_matrices: bool = False, compute_uv: bool = True, *,
                     driver: str | None = None, U: torch.Tensor | None = None, S: torch.Tensor | None = None,
                     Vh: torch.Tensor | None = None):
    """aten::_linalg_svd[.U]: our kernel for real matrices up to MAX_DIM, ATen's for the rest."""
    if A.dtype.is_complex or (A.dim() >= 2 and max(A.shape[-2:]) > MAX_DIM):
        return NotImplemented
    return svd_triton(A, full_matrices, compute_uv, driver=driver, U=U, S=S, Vh=Vh)


def svd_reference(A: torch.Tensor, full_matrices: bool = True, compute_uv: bool = True, *,
                  driver: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Singular value decomposition (torch's aten::_linalg_svd)."""
    return torch.ops.aten._linalg_svd(A, full_matrices, compute_uv, driver=driver)


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int | None = None) -> BenchCase:
    """Core shape at rows=4096, cols=32: 512 (rows // 8) matrices of 32x32; CPU: 4 of 8x8."""
    on_gpu = device.startswith("cuda")
    count, side = (max(rows // 8, 1), cols or 32) if on_gpu else (4, cols or 8)
    A = torch.randn(count, side, side, device=device, dtype=dtype)
    return BenchCase((A, False), bytes_moved=3 * A.numel() * A.element_size())


register_aten("aten::_linalg_svd", _linalg_svd_aten)
register_aten("aten::_linalg_svd.U", _linalg_svd_aten)
svd = register("svd", reference=svd_reference, triton=svd_triton, bench_case=_bench_case)
