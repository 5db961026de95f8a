"""Token sampling from logits [B, V] with per-row temperature, top-k, top-p and min-p.

A sample of p is argmax_i p_i / q_i with q_i ~ Exp(1) (the exponential race), i.e.
argmax_i (logit_i / T - log q_i): no softmax is needed for the draw itself. The noise q is drawn
with torch in the wrapper (so a seed or torch.Generator fixes it) and handed to both the Triton
kernel and the reference, which then pick the same token.

Filters become one threshold per row in logit space (keep logit >= threshold), applied in HF's
order: top-k (k-th largest logit, ties kept), top-p over the top-k survivors (the smallest prefix of
the sorted tokens whose mass reaches p; sorted with torch: only the top-k values when every top-p
row also has a top-k, else the whole row), min-p (p_i >= min_p * p_max, i.e.
logit_i >= max_logit + T * log(min_p)). The fused kernel then reads logits and noise once:
key = logit / T - log q where logit >= threshold, and keeps the first index of the max key.
Temperature 0 rows are greedy (argmax of the logits; their noise is not read).
Traffic: logits once + noise (4 B/token) written by torch and read once.

Fused thresholds: when the filters are plain numbers or lists (known on the host, so choosing the
path needs no device sync) and every sampled row with top-p also has a top-k <= K_MAX, the
thresholds come from two small kernels instead of torch.topk/sort and their syncs: each CHUNK-wide
slice of a row keeps its K largest logits (many programs per row even at batch 1), then one
program per row takes the K largest of those candidates (the row's top K, sorted) and derives
top-k, top-p and min-p from them exactly as the torch path does. Extra traffic: one more read of
the logits (~2 B/token), then the draw as above. Both kernels run only as many select-the-max
rounds as the largest top-k (the thresholds read no entry past it; before: its next power of 2):
H100, 4096 x 151,936, Qwen3's T 0.6 / top-k 20 / top-p 0.95: thresholds 8712 -> 5512 us, the
whole sampler 11115 -> 7912 us (torch.compile of the same maths 10809). The draw keeps the accurate
log: the hardware's approximate log2 saved 1.6% but may pick another token than the reference where
two keys are within ~2^-22; a key without the division and per-lane argmax state saved < 1%.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import triton
import triton.language as tl

from flagstack.ops.argmax import (NO_INDEX, argmax_combine_kernel, argmax_result, argmax_rows, argmax_update,
                                  num_splits, warps_for)
from flagstack.ops.checks import check_tensor
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.launch_cache import launch
from flagstack.ops.registry import BenchCase, register
from flagstack.ops.softmax import log_softmax

BLOCK = 2048  # vocab entries per iteration: 2 loads (logits, noise) of 2048 per program
TOPK_CHUNK = 4096  # top-k threshold: columns per first-stage slice on CUDA
K_MAX = 64  # the fused threshold path serves top-k up to this (top-p needs a top-k there)
CHUNK = 4096  # fused path: columns per candidate program (37 programs per 151,936-wide row)

ParamLike = torch.Tensor | float | int | Sequence[float] | None


@triton.jit(do_not_specialize=["temp_stride"])  # 0 or 1 per call: one compile
def _sample_kernel(logits_ptr, noise_ptr, temp_ptr, thr_ptr, val_ptr, idx_ptr, n_cols, logits_row_stride,
                   temp_stride, span, WRITE_VALUE: tl.constexpr, BLOCK: tl.constexpr):
    split, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    n_splits = tl.num_programs(0)
    lo = split * span
    hi = tl.minimum(lo + span, n_cols)
    t = tl.load(temp_ptr + row * temp_stride)  # stride 0: one temperature for every row
    threshold = tl.load(thr_ptr + row)
    greedy = t == 0.0
    noise_hi = tl.where(greedy, lo, hi)  # greedy rows read no noise
    best = tl.full((), float("-inf"), tl.float32)
    best_idx = lo
    nan_idx = tl.full((), NO_INDEX, tl.int32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(logits_ptr + row * logits_row_stride + cols, mask=cols < hi, other=float("-inf")).to(tl.float32)
        q = tl.load(noise_ptr + row * n_cols + cols, mask=cols < noise_hi, other=1.0)
        key = tl.where(x >= threshold, x / t - tl.log(q), float("-inf"))
        best, best_idx, nan_idx = argmax_update(tl.where(greedy, x, key), cols, best, best_idx, nan_idx)
    value, index = argmax_result(best, best_idx, nan_idx)
    if WRITE_VALUE:
        tl.store(val_ptr + row * n_splits + split, value)
    tl.store(idx_ptr + row * n_splits + split, index.to(tl.int64))


@triton.jit
def _top_sorted(x, K: tl.constexpr, ROUNDS: tl.constexpr):
    """The ROUNDS (<= K) largest values of a 1-D fp32 block, largest first, -inf after them: rounds
    of take the max, drop its first copy (2 block reductions per round). tl.topk's sorting network
    takes seconds per call in the CPU interpreter and ~3,100 instructions per thread for sm_90, more
    than 20 rounds (Qwen3's top-k)."""
    idx = tl.arange(0, x.shape[0])
    j = tl.arange(0, K)
    top = tl.full([K], float("-inf"), tl.float32)
    for r in range(ROUNDS):
        m = tl.max(x, axis=0)
        top = tl.where(j == r, m, top)
        first = tl.min(tl.where(x == m, idx, x.shape[0]), axis=0)
        x = tl.where(idx == first, float("-inf"), x)
    return top


@triton.jit
def _chunk_top_kernel(logits_ptr, cand_ptr, n_cols, logits_row_stride, CHUNK: tl.constexpr, K: tl.constexpr,
                      ROUNDS: tl.constexpr):
    """cand[row, chunk, :] = the ROUNDS largest logits (fp32) of one CHUNK-wide slice of a row, then -inf."""
    chunk, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    x = tl.load(logits_ptr + row * logits_row_stride + cols, mask=cols < n_cols, other=float("-inf"))
    top = _top_sorted(x.to(tl.float32), K, ROUNDS)
    tl.store(cand_ptr + (row * tl.num_programs(0) + chunk) * K + tl.arange(0, K), top)


@triton.jit(do_not_specialize=["param_stride", "row_stride"])  # vary with rows
def _threshold_kernel(cand_ptr, params_ptr, thr_ptr, n_cand, param_stride, row_stride,
                      K: tl.constexpr, N_CAND: tl.constexpr, ROUNDS: tl.constexpr):
    """thr[row] from the row's top K logits: k-th largest, top-p over the top-k, min-p (the torch
    path's formulas in its order). params: temperature, top_k (0 = off), top_p, min_p."""
    row = tl.program_id(0)
    c = tl.arange(0, N_CAND)
    top = _top_sorted(tl.load(cand_ptr + row * n_cand + c, mask=c < n_cand, other=float("-inf")), K, ROUNDS)
    t = tl.load(params_ptr + row * row_stride)
    k = tl.load(params_ptr + param_stride + row * row_stride).to(tl.int32)
    top_p = tl.load(params_ptr + 2 * param_stride + row * row_stride)
    min_p = tl.load(params_ptr + 3 * param_stride + row * row_stride)
    j = tl.arange(0, K)
    thr = tl.sum(tl.where(j == k - 1, top, 0.0), axis=0)
    thr = tl.where(k > 0, thr, float("-inf"))
    # top-p over the renormalized top-k survivors (rows with top-p have 1 <= k <= K here)
    scaled = tl.where(j < k, top, float("-inf")) / tl.where(t > 0, t, 1.0)
    peak = tl.max(scaled, axis=0)
    probs = tl.exp(scaled - tl.where(peak == float("-inf"), 0.0, peak))  # k = 0 rows: zeros, no nan
    probs = probs / tl.maximum(tl.sum(probs, axis=0), 1e-30)
    n_keep = tl.maximum(tl.sum((tl.cumsum(probs, axis=0) - probs < top_p).to(tl.int32), axis=0), 1)
    p_thr = tl.sum(tl.where(j == n_keep - 1, top, 0.0), axis=0)
    thr = tl.where(top_p < 1.0, tl.maximum(thr, p_thr), thr)
    row_max = tl.max(top, axis=0)
    m_thr = row_max + t * tl.log(tl.maximum(min_p, 1e-30))
    thr = tl.where(min_p > 0.0, tl.maximum(thr, m_thr), thr)
    tl.store(thr_ptr + row, thr)


@dataclass
class _Plan:
    """Per-row inputs of the draw, shared by the Triton and the reference path."""

    temperature: torch.Tensor  # fp32 [B], 0 = greedy
    threshold: torch.Tensor  # fp32 [B], keep logits >= threshold
    noise: torch.Tensor | None  # fp32 [B, V] ~ Exp(1); None when every row is greedy


def _row_param(name: str, value: ParamLike, rows: int, default: float, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    if value is None:
        value = default
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != rows):
            raise ValueError(f"{name} must be a scalar or have shape [{rows}], got {tuple(value.shape)}")
        return value.to(device=device, dtype=dtype).expand(rows).contiguous()
    if isinstance(value, (list, tuple)):
        if len(value) != rows:
            raise ValueError(f"{name} must have {rows} values (one per row), got {len(value)}")
        return torch.tensor(value, dtype=dtype, device=device)
    return torch.full((rows,), value, dtype=dtype, device=device)


def _top_values(logits: torch.Tensor, k: int, chunk: int | None) -> torch.Tensor:
    """The k largest logits of each row, largest first, in fp32 (exactly torch.topk's values).

    On CUDA torch.topk seems to give each row one thread block: the H100 bench took ~1 ms at 1 and
    at 256 rows of 151,936. The top k of a row are among the top k of its chunks, so select per
    chunk first (rows x chunks slices in parallel), then among the candidates. chunk=None: plain topk.
    """
    rows, vocab = logits.shape
    if chunk is None or vocab < 4 * chunk or k > chunk // 8:
        return torch.topk(logits, k, dim=-1).values.float()
    whole = vocab - vocab % chunk
    parts = [torch.topk(logits[:, :whole].reshape(rows, whole // chunk, chunk), k, dim=-1).values.reshape(rows, -1)]
    if whole < vocab:
        parts.append(logits[:, whole:])
    return torch.topk(torch.cat(parts, dim=1), k, dim=-1).values.float()


def _thresholds(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                min_p: torch.Tensor) -> torch.Tensor:
    """One logit threshold per row combining top-k, then top-p over the survivors, then min-p."""
    rows, vocab = logits.shape
    sampled = temperature > 0
    k_on = sampled & (top_k > 0) & (top_k < vocab)
    p_on = sampled & (top_p < 1)
    m_on = sampled & (min_p > 0)
    any_k, any_p, any_p_without_k, any_m = torch.stack(
        [k_on.any(), p_on.any(), (p_on & ~k_on).any(), m_on.any()]).tolist()
    threshold = torch.full((rows,), float("-inf"), dtype=torch.float32, device=logits.device)
    top_values = None
    if any_k:
        k_max = int(top_k[k_on].max())
        top_values = _top_values(logits, k_max, TOPK_CHUNK if logits.is_cuda else None)  # largest first
        kth = top_values.gather(1, (top_k.clamp(1, k_max) - 1)[:, None]).squeeze(1)
        threshold = torch.where(k_on, kth, threshold)
    if any_p:
        ranked = top_values if top_values is not None and not any_p_without_k else \
            torch.sort(logits.float(), dim=-1, descending=True).values
        beyond_k = torch.arange(ranked.shape[1], device=logits.device)[None, :] >= top_k[:, None]
        ranked = ranked.masked_fill(k_on[:, None] & beyond_k, float("-inf"))
        t = torch.where(sampled, temperature, 1.0)[:, None]
        probs = torch.softmax(ranked / t, dim=-1)
        mass_before = probs.cumsum(-1) - probs
        n_keep = (mass_before < top_p[:, None]).sum(-1).clamp(min=1)
        p_threshold = ranked.gather(1, (n_keep - 1)[:, None]).squeeze(1)
        threshold = torch.where(p_on, torch.maximum(threshold, p_threshold), threshold)
    if any_m:
        row_max = top_values[:, 0] if top_values is not None else logits.amax(-1).float()
        m_threshold = row_max + temperature * torch.log(min_p.clamp(min=1e-30))
        threshold = torch.where(m_on, torch.maximum(threshold, m_threshold), threshold)
    return threshold


def _noise(logits: torch.Tensor, generator: torch.Generator | None, seeds: Sequence[int] | None) -> torch.Tensor:
    """Exp(1) noise [B, V] in fp32: from `generator`, or one generator per row seeded by `seeds`."""
    noise = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    if seeds is None:
        return noise.exponential_(generator=generator)
    for row, seed in enumerate(seeds):
        noise[row].exponential_(generator=torch.Generator(logits.device).manual_seed(int(seed)))
    return noise


def _plan(logits: torch.Tensor, temperature: ParamLike, top_k: ParamLike, top_p: ParamLike, min_p: ParamLike,
          generator: torch.Generator | None, seeds: Sequence[int] | torch.Tensor | None) -> _Plan:
    rows, device = logits.shape[0], logits.device
    temperature = _row_param("temperature", temperature, rows, 1.0, torch.float32, device)
    top_k = _row_param("top_k", top_k, rows, 0, torch.int64, device)
    top_p = _row_param("top_p", top_p, rows, 1.0, torch.float32, device)
    min_p = _row_param("min_p", min_p, rows, 0.0, torch.float32, device)
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.tolist()
    all_greedy = not bool((temperature > 0).any())
    noise = None if all_greedy or logits.numel() == 0 else _noise(logits, generator, seeds)
    threshold = _thresholds(logits, temperature, top_k, top_p, min_p) if noise is not None else None
    return _Plan(temperature, threshold, noise)


def _host_values(value: ParamLike, default: float) -> list[float] | None:
    """A filter's values as a host list (one per row, or one for all); None for a tensor."""
    if value is None:
        return [default]
    if isinstance(value, torch.Tensor):
        return None
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def _fused_params(logits: torch.Tensor, temperature: ParamLike, top_k: ParamLike, top_p: ParamLike,
                  min_p: ParamLike) -> tuple[torch.Tensor, int] | None:
    """(params [4, 1 or B] fp32 on the device, largest top-k) when the fused threshold path applies.

    It applies when every filter is known on the host, some row samples, and every sampled row's
    top-k is off or <= K_MAX, with top-p only on rows that have a top-k. None: use the torch path.
    """
    rows, vocab = logits.shape
    values = [_host_values(v, d) for v, d in ((temperature, 1.0), (top_k, 0.0), (top_p, 1.0), (min_p, 0.0))]
    if any(v is None for v in values) or rows == 0:
        return None
    width = max(len(v) for v in values)
    if width not in (1, rows):
        return None  # the torch path raises the error
    temps, ks, ps, mins = (v * width if len(v) == 1 else v for v in values)
    ks = [k if 0 < k < vocab else 0.0 for k in ks]
    if not any(t > 0 for t in temps):
        return None  # all greedy
    for t, k, p in zip(temps, ks, ps):
        if t > 0 and (k > K_MAX or (p < 1 and k == 0)):
            return None
    params = torch.tensor([temps, ks, ps, mins], dtype=torch.float32).to(logits.device, non_blocking=True)
    return params, int(max(ks))


def _fused_thresholds(logits: torch.Tensor, params: torch.Tensor, k_max: int) -> torch.Tensor:
    """Per-row thresholds from the two candidate kernels (see the module docstring)."""
    rows, vocab = logits.shape
    chunk = min(CHUNK, max(2, next_power_of_2(vocab)))
    k = max(2, next_power_of_2(k_max))  # k <= chunk since k_max < vocab
    rounds = max(1, k_max)  # entries past k_max are never read
    n_chunks = cdiv(vocab, chunk)
    cand = torch.empty(rows, n_chunks * k, dtype=torch.float32, device=logits.device)
    launch(_chunk_top_kernel, (n_chunks, rows), logits, cand, vocab, logits.stride(0), CHUNK=chunk, K=k, ROUNDS=rounds,
           num_warps=8 if chunk >= 2048 else 4)
    threshold = torch.empty(rows, dtype=torch.float32, device=logits.device)
    launch(_threshold_kernel, (rows,), cand, params, threshold, n_chunks * k, params.stride(0),
           params.stride(1) if params.shape[1] > 1 else 0, K=k,
           N_CAND=next_power_of_2(n_chunks * k), ROUNDS=rounds, num_warps=4)
    return threshold


def sample_triton(logits: torch.Tensor, temperature: ParamLike = 1.0, top_k: ParamLike = None,
                  top_p: ParamLike = None, min_p: ParamLike = None, *, generator: torch.Generator | None = None,
                  seeds: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """Sample one token id per row (int64 [B]) with the fused Triton kernel."""
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    fused = _fused_params(logits, temperature, top_k, top_p, min_p)
    if fused is not None:  # no host sync: thresholds from the candidate kernels
        params, k_max = fused
        temps = params[0].expand(logits.shape[0])  # stride 0 when one value serves every row
        if isinstance(seeds, torch.Tensor):
            seeds = seeds.tolist()
        plan = _Plan(temps, _fused_thresholds(logits, params, k_max), _noise(logits, generator, seeds))
    else:
        plan = _plan(logits, temperature, top_k, top_p, min_p, generator, seeds)
    if plan.noise is None:
        return argmax_rows(logits)
    rows, vocab = logits.shape
    block = min(BLOCK, next_power_of_2(vocab))
    splits = num_splits(rows, vocab, logits.device, block)
    span = cdiv(cdiv(vocab, splits), block) * block
    splits = cdiv(vocab, span)
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    values = torch.empty(rows, splits, dtype=torch.float32, device=logits.device) if splits > 1 else out
    indices = torch.empty(rows, splits, dtype=torch.int64, device=logits.device) if splits > 1 else out
    launch(_sample_kernel, (splits, rows), logits, plan.noise, plan.temperature, plan.threshold, values, indices, vocab,
           logits.stride(0), plan.temperature.stride(0), span, WRITE_VALUE=splits > 1,
           BLOCK=block, num_warps=warps_for(block))
    if splits > 1:
        launch(argmax_combine_kernel, (rows,), values, indices, out, splits, SPLITS=next_power_of_2(splits))
    return out


def sample_reference(logits: torch.Tensor, temperature: ParamLike = 1.0, top_k: ParamLike = None,
                     top_p: ParamLike = None, min_p: ParamLike = None, *, generator: torch.Generator | None = None,
                     seeds: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """Sample one token id per row (int64 [B]): temperature (0 = greedy), top-k, top-p, min-p; seeded."""
    plan = _plan(logits, temperature, top_k, top_p, min_p, generator, seeds)
    x = logits.float()
    if plan.noise is None:
        return x.argmax(-1)
    t = plan.temperature[:, None]
    key = torch.where(x >= plan.threshold[:, None], x / t - torch.log(plan.noise), float("-inf"))
    return torch.where(t == 0, x, key).argmax(-1)


def _validate(logits: torch.Tensor, temperature: ParamLike = 1.0, top_k: ParamLike = None,
              top_p: ParamLike = None, min_p: ParamLike = None, *, generator: torch.Generator | None = None,
              seeds: Sequence[int] | torch.Tensor | None = None) -> None:
    check_tensor("logits", logits, min_dim=2, max_dim=2)
    if logits.shape[1] == 0:
        raise ValueError(f"logits must have a non-empty vocab dim, got shape {tuple(logits.shape)}")
    checks = {"temperature": (temperature, lambda v: v >= 0, ">= 0"),
              "top_p": (top_p, lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
              "min_p": (min_p, lambda v: (v >= 0) & (v <= 1), "in [0, 1]")}
    for name, (value, ok, want) in checks.items():
        if value is not None:
            values = _row_param(name, value, logits.shape[0], 0.0, torch.float32, torch.device("cpu"))
            if not bool(ok(values).all()):
                raise ValueError(f"{name} must be {want} in every row, got {values.tolist()}")
    if top_k is not None:
        _row_param("top_k", top_k, logits.shape[0], 0, torch.int64, torch.device("cpu"))
    if generator is not None and seeds is not None:
        raise ValueError("pass either generator or seeds, not both")
    if seeds is not None and len(seeds) != logits.shape[0]:
        raise ValueError(f"seeds must have one seed per row ({logits.shape[0]}), got {len(seeds)}")


def compute_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, top_n: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """fp32 log-probabilities of `token_ids` [B] under logits [B, V], and the top_n (logprobs, ids) per row."""
    check_tensor("token_ids", token_ids, dtypes=(torch.int32, torch.int64), min_dim=1, max_dim=1)
    if token_ids.shape[0] != logits.shape[0]:
        raise ValueError(f"token_ids must have one id per logits row ({logits.shape[0]}), got {token_ids.shape[0]}")
    if not 0 <= top_n <= logits.shape[-1]:
        raise ValueError(f"top_n must be in [0, {logits.shape[-1]}], got {top_n}")
    logprobs = log_softmax(logits, -1, torch.float32)
    chosen = logprobs.gather(1, token_ids.long()[:, None]).squeeze(1)
    if top_n == 0:
        return chosen, None, None
    top = logprobs.topk(top_n, dim=-1)
    return chosen, top.values, top.indices


def _bench_case(rows: int, dtype: torch.dtype, device: str, vocab: int = 151936) -> BenchCase:
    if not str(device).startswith("cuda"):
        vocab = 8192  # the interpreter's candidate kernels take ~10 s per 151,936-wide row; 2 slices here
    logits = torch.randn(rows, vocab, dtype=dtype, device=device)
    generator = torch.Generator(device).manual_seed(0)
    # The Qwen3 defaults (T 0.6, top-k 20, top-p 0.95): logits read once, noise written and read once.
    return BenchCase((logits, 0.6, 20, 0.95, 0.0), {"generator": generator},
                     bytes_moved=logits.numel() * (logits.element_size() + 8))


sample = register("sample", reference=sample_reference, triton=sample_triton, validate=_validate,
                  bench_case=_bench_case)
