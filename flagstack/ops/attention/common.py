"""Shared pieces of the attention kernels: argument checks, the online-softmax tile step, launch flags.

Scores are kept in base 2: the wrappers fold log2(e) into the scale so the kernels use exp2.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from flagstack.ops.checks import check_same_device, check_tensor

LOG2E = math.log2(math.e)
INDEX_DTYPES = (torch.int32, torch.int64)
HALF_DTYPES = (torch.float16, torch.bfloat16)
FP8_KV = torch.float8_e4m3fn  # the fp8 KV cache format: stored value = clamp(x / scale, +-FP8_MAX)
FP8_MAX = 448.0
CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, FP8_KV)


def upcast_for_interpreter(dtype: torch.dtype) -> bool:
    """True for bf16 under TRITON_INTERPRET=1, where tl.dot on bf16 is wrong: the kernels upcast first."""
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products ('ieee'); tf32 would lose 13 mantissa bits."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_cache(k_cache: object, v_cache: object) -> tuple[int, int, int]:
    """Validate the paged K/V caches; returns (block_size, num_kv_heads, head_dim)."""
    check_tensor("k_cache", k_cache, dtypes=CACHE_DTYPES, min_dim=4, max_dim=4)
    check_tensor("v_cache", v_cache, dtypes=CACHE_DTYPES, min_dim=4, max_dim=4)
    if k_cache.shape != v_cache.shape or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"v_cache must match k_cache's shape and dtype, got {tuple(v_cache.shape)} "
                         f"{v_cache.dtype} vs {tuple(k_cache.shape)} {k_cache.dtype}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must have a unit stride on head_dim")
    _, block_size, kv_heads, head_dim = k_cache.shape
    if head_dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim (last cache dimension) must be a power of 2 in 16..256, got {head_dim}")
    return block_size, kv_heads, head_dim


def check_kv_scales(k_cache: torch.Tensor, k_scale: object, v_scale: object) -> None:
    """k_scale / v_scale: positive finite numbers, other than 1 only for an fp8 cache."""
    for name, value in (("k_scale", k_scale), ("v_scale", v_scale)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if value != 1 and k_cache.dtype != FP8_KV:
            raise ValueError(f"{name} must be 1 for a {k_cache.dtype} cache (scales apply to an fp8 cache), "
                             f"got {value!r}")


def gather_pages(cache: torch.Tensor, pages: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """cache[pages] (into `out` if given); an fp8 cache moves as bytes, for CPU torch has no fp8 index_select."""
    if cache.dtype != FP8_KV:
        return torch.index_select(cache, 0, pages, out=out) if out is not None else cache.index_select(0, pages)
    raw = cache.view(torch.uint8)
    if out is None:
        return raw.index_select(0, pages).view(FP8_KV)
    torch.index_select(raw, 0, pages, out=out.view(torch.uint8))
    return out


def check_attention_args(q: object, k_cache: object, v_cache: object, seq_lens: object,
                         block_tables: object, scale: float, sliding_window: int | None,
                         softcap: float | None, k_scale: float = 1.0, v_scale: float = 1.0) -> int:
    """Validate the arguments shared by paged_decode and varlen_attention; returns the GQA group size."""
    check_tensor("q", q, min_dim=3, max_dim=3)
    _, kv_heads, head_dim = check_cache(k_cache, v_cache)
    if q.shape[2] != head_dim:
        raise ValueError(f"q head_dim must equal the cache's ({head_dim}), got shape {tuple(q.shape)}")
    if q.shape[1] % kv_heads != 0:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of the cache's kv heads ({kv_heads})")
    check_tensor("seq_lens", seq_lens, dtypes=INDEX_DTYPES, min_dim=1, max_dim=1)
    check_tensor("block_tables", block_tables, dtypes=INDEX_DTYPES, min_dim=2, max_dim=2)
    if block_tables.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"block_tables must have one row per sequence ({seq_lens.shape[0]}), "
                         f"got shape {tuple(block_tables.shape)}")
    if not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if sliding_window is not None and not (isinstance(sliding_window, int) and sliding_window >= 1):
        raise ValueError(f"sliding_window must be None or an int >= 1, got {sliding_window!r}")
    if softcap is not None and not (isinstance(softcap, (int, float)) and softcap > 0):
        raise ValueError(f"softcap must be None or a positive number, got {softcap!r}")
    check_kv_scales(k_cache, k_scale, v_scale)
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, seq_lens=seq_lens, block_tables=block_tables)
    return q.shape[1] // kv_heads


def score_scale(scale: float, softcap: float | None) -> tuple[float, float]:
    """(multiplier of q.k, softcap) as the kernels want them: base-2 scores, softcap pre-divided."""
    if softcap is None:
        return scale * LOG2E, 0.0
    return scale / softcap, softcap


@triton.jit
def _tanh(x):
    # tanh from exp2 (the interpreter has no libdevice): saturates cleanly to +-1 at large |x|.
    return 1.0 - 2.0 / (tl.exp2(x * 2.8853900817779268) + 1.0)


@triton.jit
def softmax_tile_step(acc, m_i, l_i, q, k, v, keep, qk_scale, softcap,
                      MASKED: tl.constexpr, USE_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
                      PRECISION: tl.constexpr, SPLIT_P: tl.constexpr):
    """One online-softmax step: q [M, D] against a key tile k/v [N, D]; `keep` [M, N] masks scores.

    m_i is the running row max of base-2 scores, l_i the running sum of exp2(score - m_i).
    The probabilities enter the P.V product in v's dtype; SPLIT_P adds a second product with the
    rounding remainder, so half-precision P costs no accuracy (~16 more bits) for one more tl.dot.
    """
    if UPCAST:  # interpreter only: its bf16 dot is wrong, fp32 is exact
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if USE_SOFTCAP:
        s = softcap * _tanh(s * qk_scale) * 1.4426950408889634
    else:
        s = s * qk_scale
    if MASKED:
        s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # a row whose keys are all masked so far keeps m = -inf; subtract 0 there to avoid inf - inf
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    p_rounded = p.to(v.dtype)
    acc = tl.dot(p_rounded, v, acc, input_precision=PRECISION)
    if SPLIT_P:
        acc = tl.dot((p - p_rounded.to(tl.float32)).to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, m_new, l_i
