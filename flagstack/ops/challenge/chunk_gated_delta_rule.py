"""chunk_gated_delta_rule: the gated delta-rule linear attention of Qwen3-Next / Gated DeltaNet, in the
chunked form (chunks of 64 tokens), forward only. Not an ATen op: a flagstack op with a step-by-step
recurrent reference.

Recurrence per batch and head, state S [Dk, Dv] (fp32), for t = 1..T:
    S   <- exp(g_t) S                           g: log decay (<= 0)
    u_t  = beta_t (v_t - S^T k_t)               the delta rule: correct what S recalls for k_t
    S   <- S + k_t u_t^T
    o_t  = S^T (scale q_t)
Chunked form (one chunk of C tokens from state S0; G = cumsum of g inside the chunk, Gamma = exp(G)):
    S_i = Gamma_i S0 + sum_{j<=i} (Gamma_i / Gamma_j) k_j u_j^T, so the u_i solve the unit lower-
    triangular system (I + A) U = diag(beta) V - diag(beta Gamma) K S0, A_ij = beta_i Gamma_i/Gamma_j k_i.k_j
    (j < i). With T = (I + A)^-1 (the UT transform): U = T diag(beta) V - (T diag(beta Gamma) K) S0 = U~ - W S0,
    O = scale (diag(Gamma) Q S0 + (QK^T o M) U), M_ij = Gamma_i/Gamma_j (j <= i), and the next state
    S_C = Gamma_C S0 + (diag(Gamma_C / Gamma) K)^T U.
Kernels: (1) per (batch, head, chunk), in parallel: T by forward substitution, then W and U~, which do
not depend on the state; (2) per (batch, head, block of Dv): the chunks in order, carrying S in
registers: U = U~ - W S, the chunk's output, the next state. Everything after the input loads is
fp32, and so are the dots (see dot_precision).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.checks import check_same_device, check_tensor
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.registry import BenchCase, register

CHUNK = 64
MAX_HEAD_DIM = 256
SM90_SHARED_BYTES = 232_448  # the most shared memory one H100 block may use


def dot_precision(dtype: torch.dtype, block_k: int) -> str:
    """tl.dot's input_precision for inputs of `dtype` and padded key dim `block_k`. Nearly every dot has an fp32
    intermediate operand (T, W, U, the state, the decays, L2-normalized rows), so plain TF32 (10-bit mantissa)
    would round those to 2^-11: bf16 outputs near zero were off by up to 4.9e-4 (25%) from the exact recurrence
    on the H100. bf16 takes TF32x3 (three tensor-core dots, ~fp32 accuracy) up to BK 128; its operand copies
    do not fit sm90's shared memory at BK 256 (295 KB), which takes the FMA path ("ieee", 197 KB), as fp16."""
    return "tf32x3" if dtype == torch.bfloat16 and block_k <= 128 else "ieee"


def state_kernel_config(block_k: int, block_v: int, dot: str = "ieee") -> dict[str, int]:
    """BV, num_warps and num_stages of the state kernel for padded head dims `block_k`, `block_v`. Each stage
    buffers a chunk of q, k, W (BK wide) and U~; with every option on, compiled for sm90, bf16 needs 230 KB
    of shared memory at BK 128, BV 64 and 2 stages (280 KB at 3), 198 KB at BV 32; BK 256 fits only at
    1 stage with BV 16 (217 KB). Smaller BV also means more programs: 2 x 16 heads x 4 blocks of BV 32 fill
    an H100's 132 SMs better than 64 programs. TF32x3 dots (bf16) stage more: 239 KB at BK 128, BV 32 and
    2 stages; BV 32 at 1 stage fits. H100 sweep at bf16, 2 x 4096 tokens x 16 heads of 128
    (scripts/gdr_state_sweep.py): BV 32, 4 warps, 1 stage 2.03 ms; BV 16, 4 warps 2.7-3.3 ms; BV 32, 8 warps
    3.6 ms; BV 16 with 8 warps compiles but hits an illegal address at run time (triton 3.6).
    tests/ops/challenge/test_chunk_gated_delta_rule.py checks the 128 config against SM90_SHARED_BYTES."""
    if block_k == 128 and dot == "tf32x3":
        return {"BV": min(32, block_v), "num_warps": 4, "num_stages": 1}
    if block_k <= 64:
        return {"BV": min(64, block_v), "num_warps": 4, "num_stages": 3}
    return {"BV": min(32 if block_k == 128 else 16, block_v), "num_warps": 8, "num_stages": 2 if block_k == 128 else 1}


@triton.jit
def load_rows(ptr, t, t_stride, d, live, D, L2NORM: tl.constexpr):
    """Rows t of a [T, D] slice as fp32 [C, BD] (zeros outside), optionally scaled to unit L2 norm."""
    rows = tl.load(ptr + t[:, None] * t_stride + d[None, :], mask=live[:, None] & (d < D)[None, :], other=0)
    rows = rows.to(tl.float32)
    if L2NORM:  # as FLA / HF: x / sqrt(sum x^2 + 1e-6)
        rows = rows / tl.sqrt(tl.sum(rows * rows, axis=1) + 1e-6)[:, None]
    return rows


@triton.jit
def _chunk_transform_kernel(k_ptr, v_ptr, g_ptr, beta_ptr, w_ptr, u_ptr, gcum_ptr, T, H, GROUP, DK, DV,
                            k_sb, k_st, k_sh, v_sb, v_st, v_sh, g_sb, g_st, g_sh, b_sb, b_st, b_sh,
                            C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr,
                            DOT: tl.constexpr):
    """W = T diag(beta Gamma) K and U~ = T diag(beta) V of one chunk, T = (I + A)^-1."""
    chunk, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    t = chunk * C + tl.arange(0, C)
    live = t < T
    dk, dv = tl.arange(0, BK), tl.arange(0, BV)
    k = load_rows(k_ptr + b * k_sb + (h // GROUP) * k_sh, t, k_st, dk, live, DK, L2NORM)
    v = load_rows(v_ptr + b * v_sb + h * v_sh, t, v_st, dv, live, DV, False)
    g = tl.load(g_ptr + b * g_sb + h * g_sh + t * g_st, mask=live, other=0).to(tl.float32)
    beta = tl.load(beta_ptr + b * b_sb + h * b_sh + t * b_st, mask=live, other=0).to(tl.float32)
    G = tl.cumsum(g, 0)  # padded tokens have g = 0: G stays at the last real token's value
    rows, cols = tl.arange(0, C)[:, None], tl.arange(0, C)[None, :]
    below = rows > cols
    decay = tl.exp(tl.where(below, G[:, None] - G[None, :], 0.0))  # <= 1 below the diagonal
    A = tl.where(below, beta[:, None] * decay * tl.dot(k, tl.trans(k), input_precision=DOT), 0.0)
    # Column-sweep forward substitution on [I + A | I]: once row j of T is final, subtract A_ij times it
    # from every row i > j. Gathers pick the column and the row without a reduction per step.
    T_inv = tl.where(rows == cols, 1.0, 0.0)
    for j in range(0, C - 1):
        a_col = tl.gather(A, tl.full([C, 1], j, tl.int32), axis=1)  # A[:, j]
        t_row = tl.gather(T_inv, tl.full([1, C], j, tl.int32), axis=0)  # T[j, :]
        T_inv -= a_col * t_row  # A[i, j] = 0 for i <= j: rows up to j stay as they are
    w = tl.dot(T_inv, (beta * tl.exp(G))[:, None] * k, input_precision=DOT)
    u = tl.dot(T_inv, beta[:, None] * v, input_precision=DOT)
    row_at = bh.to(tl.int64) * tl.cdiv(T, C) * C + t  # scratch rows: [B * H, chunks * C]
    tl.store(w_ptr + row_at[:, None] * BK + dk[None, :], w)
    tl.store(u_ptr + row_at[:, None] * BV + dv[None, :], u)
    tl.store(gcum_ptr + row_at, G)


@triton.jit
def _chunk_state_kernel(q_ptr, k_ptr, w_ptr, u_ptr, gcum_ptr, s0_ptr, o_ptr, sT_ptr, T, H, GROUP, DK, DV, scale,
                        q_sb, q_st, q_sh, k_sb, k_st, k_sh, o_sb, o_st, o_sh,
                        C: tl.constexpr, BK: tl.constexpr, BV_ALL: tl.constexpr, BV: tl.constexpr,
                        HAS_S0: tl.constexpr, STORE_STATE: tl.constexpr, L2NORM: tl.constexpr, DOT: tl.constexpr):
    """The chunks of one (batch, head) in order, for a block of BV value columns."""
    bh, vb = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    dk, dv = tl.arange(0, BK), vb * BV + tl.arange(0, BV)
    v_live = dv < DV
    state_at = bh.to(tl.int64) * DK * DV + dk[:, None] * DV + dv[None, :]
    if HAS_S0:
        S = tl.load(s0_ptr + state_at, mask=(dk < DK)[:, None] & v_live[None, :], other=0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], tl.float32)
    rows, cols = tl.arange(0, C)[:, None], tl.arange(0, C)[None, :]
    scratch = bh.to(tl.int64) * tl.cdiv(T, C) * C
    for start in range(0, T, C):
        t = start + tl.arange(0, C)
        live = t < T
        q = load_rows(q_ptr + b * q_sb + (h // GROUP) * q_sh, t, q_st, dk, live, DK, L2NORM)
        k = load_rows(k_ptr + b * k_sb + (h // GROUP) * k_sh, t, k_st, dk, live, DK, L2NORM)
        w = tl.load(w_ptr + (scratch + t)[:, None] * BK + dk[None, :])
        u = tl.load(u_ptr + (scratch + t)[:, None] * BV_ALL + dv[None, :]) - tl.dot(w, S, input_precision=DOT)
        G = tl.load(gcum_ptr + scratch + t)
        G_last = tl.sum(tl.where(tl.arange(0, C) == C - 1, G, 0.0), axis=0)
        causal = tl.where(rows >= cols, tl.exp(tl.where(rows >= cols, G[:, None] - G[None, :], 0.0)), 0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT) * causal
        o = (tl.exp(G)[:, None] * tl.dot(q, S, input_precision=DOT) + tl.dot(scores, u, input_precision=DOT)) * scale
        tl.store(o_ptr + b * o_sb + h * o_sh + t[:, None] * o_st + dv[None, :], o.to(o_ptr.dtype.element_ty),
                 mask=live[:, None] & v_live[None, :])
        S = tl.exp(G_last) * S + tl.dot(tl.trans(k * tl.exp(G_last - G)[:, None]), u, input_precision=DOT)
    if STORE_STATE:
        tl.store(sT_ptr + state_at, S, mask=(dk < DK)[:, None] & v_live[None, :])


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
              scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
              use_qk_l2norm_in_kernel: bool = False) -> None:
    """Raise ValueError naming the argument whose shape, dtype or device is wrong."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, min_dim=4, max_dim=4)
    batch, seq, heads_k, dim_k = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    heads = v.shape[2]
    if v.shape[:2] != (batch, seq) or heads % heads_k:
        raise ValueError(f"v must be [B, T, H, Dv] with q's B, T ({batch}, {seq}) and H a multiple of q's heads "
                         f"({heads_k}), got {tuple(v.shape)}")
    if max(dim_k, v.shape[3]) > MAX_HEAD_DIM or min(dim_k, v.shape[3]) < 1:
        raise ValueError(f"head dims must be in 1..{MAX_HEAD_DIM}, got q {dim_k} and v {v.shape[3]}")
    for name, t in (("g", g), ("beta", beta)):
        check_tensor(name, t, dtypes=(torch.float16, torch.bfloat16, torch.float32), min_dim=3, max_dim=3)
        if t.shape != (batch, seq, heads):
            raise ValueError(f"{name} must have shape {(batch, seq, heads)} ([B, T, H] of v), got {tuple(t.shape)}")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, dtypes=(torch.float16, torch.bfloat16, torch.float32),
                     min_dim=4, max_dim=4)
        if initial_state.shape != (batch, heads, dim_k, v.shape[3]):
            raise ValueError(f"initial_state must have shape {(batch, heads, dim_k, v.shape[3])} ([B, H, Dk, Dv]), "
                             f"got {tuple(initial_state.shape)}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a number or None, got {type(scale).__name__}")
    check_same_device(q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state)


def chunk_gated_delta_rule_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                                  beta: torch.Tensor, scale: float | None = None,
                                  initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                                  use_qk_l2norm_in_kernel: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule attention, chunked: q, k [B, T, Hk, Dk], v [B, T, H, Dv] (H a multiple of Hk),
    g (log decay) and beta [B, T, H]; returns o [B, T, H, Dv] and, if asked, the fp32 final state."""
    batch, seq, heads_k, dim_k = q.shape
    heads, dim_v = v.shape[2], v.shape[3]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    scale = dim_k ** -0.5 if scale is None else float(scale)
    out = torch.empty(batch, seq, heads, dim_v, dtype=q.dtype, device=q.device)
    final = (torch.empty(batch, heads, dim_k, dim_v, dtype=torch.float32, device=q.device) if output_final_state
             else None)
    s0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    if seq == 0 or batch * heads == 0:
        if final is not None:
            final.copy_(s0) if s0 is not None else final.zero_()
        return out, final
    chunks = cdiv(seq, CHUNK)
    bk, bv_all = max(16, next_power_of_2(dim_k)), max(16, next_power_of_2(dim_v))
    scratch = (batch * heads, chunks * CHUNK)
    w = torch.empty(*scratch, bk, dtype=torch.float32, device=q.device)
    u = torch.empty(*scratch, bv_all, dtype=torch.float32, device=q.device)
    gcum = torch.empty(scratch, dtype=torch.float32, device=q.device)
    dot = dot_precision(q.dtype, bk)
    group = heads // heads_k
    _chunk_transform_kernel[(chunks, batch * heads)](
        k, v, g, beta, w, u, gcum, seq, heads, group, dim_k, dim_v, k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), *g.stride(), *beta.stride(), C=CHUNK, BK=bk, BV=bv_all,
        L2NORM=use_qk_l2norm_in_kernel, DOT=dot, num_warps=4)
    config = state_kernel_config(bk, bv_all, dot)
    _chunk_state_kernel[(batch * heads, cdiv(dim_v, config["BV"]))](
        q, k, w, u, gcum, s0 if s0 is not None else w, out, final if final is not None else w, seq, heads, group,
        dim_k, dim_v, scale, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        *out.stride()[:3], C=CHUNK, BK=bk, BV_ALL=bv_all, HAS_S0=s0 is not None, STORE_STATE=final is not None,
        L2NORM=use_qk_l2norm_in_kernel, DOT=dot, **config)
    return out, final


def chunk_gated_delta_rule_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                                     beta: torch.Tensor, scale: float | None = None,
                                     initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                                     use_qk_l2norm_in_kernel: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule attention, the recurrence step by step (fp32; fp64 for fp64 inputs)."""
    acc, out_dtype = (torch.float64 if q.dtype == torch.float64 else torch.float32), q.dtype
    batch, seq, heads_k, dim_k = q.shape
    heads, dim_v = v.shape[2], v.shape[3]
    q, k = (t.to(acc).repeat_interleave(heads // heads_k, dim=2) for t in (q, k))
    if use_qk_l2norm_in_kernel:
        q, k = (t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-6) for t in (q, k))
    q = q * (dim_k ** -0.5 if scale is None else scale)
    v, decay, beta = v.to(acc), g.to(acc).exp(), beta.to(acc)
    state = torch.zeros(batch, heads, dim_k, dim_v, dtype=acc, device=q.device) if initial_state is None \
        else initial_state.to(acc).clone()
    out = torch.empty(batch, seq, heads, dim_v, dtype=acc, device=q.device)
    for t in range(seq):
        state = state * decay[:, t, :, None, None]
        update = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], state))
        state = state + k[:, t, :, :, None] * update[:, :, None, :]
        out[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], state)
    return out.to(out_dtype), (state.to(torch.float32) if output_final_state else None)


def _bench_case(rows: int, dtype: torch.dtype, device: str, cols: int | None = None) -> BenchCase:
    """Qwen3-Next-like linear attention: 2 sequences of `rows` tokens, 16 heads of 128 (cols) dims."""
    dim = cols or (128 if device.startswith("cuda") else 16)
    seq, heads = (rows if device.startswith("cuda") else min(rows, 70)), 16 if device.startswith("cuda") else 2
    q, k = (torch.nn.functional.normalize(torch.randn(2, seq, heads, dim, device=device), dim=-1).to(dtype)
            for _ in range(2))
    v = torch.randn(2, seq, heads, dim, device=device).to(dtype)
    g = -torch.rand(2, seq, heads, device=device) * 0.1
    beta = torch.rand(2, seq, heads, device=device)
    return BenchCase((q, k, v, g, beta), bytes_moved=4 * q.numel() * q.element_size())


chunk_gated_delta_rule = register("chunk_gated_delta_rule", reference=chunk_gated_delta_rule_reference,
                                  triton=chunk_gated_delta_rule_triton, validate=_validate, bench_case=_bench_case)
