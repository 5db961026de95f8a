"""Rotary position embedding (RoPE) of q and k in place, both in one launch, plus the cos/sin cache.

cos_sin_cache[max_pos, rot_dim] rows are [cos(rot_dim/2) | sin(rot_dim/2)] in fp32 (built by
`rope_cos_sin_cache`). Styles: NeoX rotates the two halves of the rotary dims (Llama, Qwen3: HF's
`rotate_half`); GPT-J rotates interleaved pairs (2i, 2i+1). Dims past rot_dim (partial rotary) are
left untouched, and never read.

Grid: one program per token rotates all its q and k heads (Liger's layout): it issues every load
before the first store, q and k before cos/sin (whose address waits on the position's load), and
reads the token's cos/sin row once. On an H100 at 32768 tokens x (32 + 8) heads of 128, bf16: 236 us,
98% of copy speed (Liger 239 us; the earlier grid of 16-head blocks per program: 257 us; 2, 4 or 8
warps all 236-237 us). The tile is held in registers: one warp per 1024 (padded) pairs, 4 to 16
warps, compiles for sm_90 without spills up to 128 + 8 heads of 128 (more, e.g. 128 + 8 heads of
256, spills a little at 16 warps: still correct, not timed).
Memory traffic: read + write the rotary dims of q and k, 2*T*(Hq+Hk)*rot_dim*elem_size bytes, plus
one cos/sin row per token (rot_dim*4 bytes).
Maths in fp32 with fp32 cos/sin, rounded once to q's dtype.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from flagstack.ops.checks import check_same_device, check_tensor
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.launch_cache import launch
from flagstack.ops.registry import BenchCase, register

INT_DTYPES = (torch.int32, torch.int64)
ROPE_TYPES = ("default", "linear", "llama3")


@triton.jit
def rope_pair_offsets(d, half, IS_NEOX: tl.constexpr):
    """Offsets in a head of the two elements rotated together by frequency d."""
    if IS_NEOX:
        first, second = d, d + half
    else:
        first, second = 2 * d, 2 * d + 1
    return first, second


@triton.jit
def rope_cos_sin(cache_ptr, pos_ptr, token, cache_stride, half, BLOCK_D: tl.constexpr):
    """The token's cos and sin rows, [1, BLOCK_D] fp32 (zero past `half`), read once per program."""
    d = tl.arange(0, BLOCK_D)
    row = cache_ptr + tl.load(pos_ptr + token).to(tl.int64) * cache_stride
    cos = tl.load(row + d, mask=d < half, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(row + half + d, mask=d < half, other=0.0).to(tl.float32)[None, :]
    return cos, sin


@triton.jit
def _rope_load(ptr, token, n_heads, token_stride, head_stride, half, IS_NEOX: tl.constexpr,
               BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """All heads of a token as a [BLOCK_H, BLOCK_D] tile: (pointers to the first and second elements
    of each pair, the mask, the two halves in fp32)."""
    heads = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    off1, off2 = rope_pair_offsets(d, half, IS_NEOX)
    mask = (heads < n_heads)[:, None] & (d < half)[None, :]
    base = ptr + token * token_stride + heads[:, None].to(tl.int64) * head_stride
    p1, p2 = base + off1[None, :], base + off2[None, :]
    x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p2, mask=mask, other=0.0).to(tl.float32)
    return p1, p2, mask, x1, x2


@triton.jit
def _rope_store(p1, p2, mask, x1, x2, cos, sin):
    tl.store(p1, (x1 * cos - x2 * sin).to(p1.dtype.element_ty), mask=mask)
    tl.store(p2, (x2 * cos + x1 * sin).to(p2.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(pos_ptr, q_ptr, k_ptr, cache_ptr, n_q_heads, n_k_heads, q_token_stride, q_head_stride,
                   k_token_stride, k_head_stride, cache_stride, half, IS_NEOX: tl.constexpr,
                   BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr):
    """All heads of one token: every load is issued before the first store, q and k before cos/sin,
    whose address waits on the position's load (in the SASS for sm_90 of a grid that loaded cos/sin
    first, the second tile's loads sat behind that round trip)."""
    token = tl.program_id(0).to(tl.int64)
    q1p, q2p, q_mask, q1, q2 = _rope_load(q_ptr, token, n_q_heads, q_token_stride, q_head_stride, half,
                                          IS_NEOX, BLOCK_HQ, BLOCK_D)
    k1p, k2p, k_mask, k1, k2 = _rope_load(k_ptr, token, n_k_heads, k_token_stride, k_head_stride, half,
                                          IS_NEOX, BLOCK_HK, BLOCK_D)
    cos, sin = rope_cos_sin(cache_ptr, pos_ptr, token, cache_stride, half, BLOCK_D)
    _rope_store(q1p, q2p, q_mask, q1, q2, cos, sin)
    _rope_store(k1p, k2p, k_mask, k1, k2, cos, sin)


def _warps(heads: int, pairs: int) -> int:
    """Warps for a [heads, pairs] tile: one per 1024 pairs, 4 to 16 (see the module docstring)."""
    return min(16, max(4, next_power_of_2(cdiv(heads * pairs, 1024))))


def heads_view(t: torch.Tensor, head_size: int) -> torch.Tensor:
    """[T, H*D] or [T, H, D] as a [T, H, D] view of the same memory (for in-place updates)."""
    # Tensor.view: unflatten's Python wrapper costs more host time; the head count spelled out for empty t
    return t.view(t.shape[0], t.shape[1] // head_size, head_size) if t.dim() == 2 else t


def rotary_embedding_triton(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                            cos_sin_cache: torch.Tensor, head_size: int,
                            is_neox: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k in place with the Triton kernel (one launch); returns (q, k)."""
    qh, kh = heads_view(q, head_size), heads_view(k, head_size)
    tokens, half = qh.shape[0], cos_sin_cache.shape[1] // 2
    positions = positions.contiguous()  # the kernel reads positions[token] at unit stride
    if tokens == 0 or half == 0:
        return q, k
    block_d = next_power_of_2(half)
    block_hq, block_hk = max(1, next_power_of_2(qh.shape[1])), max(1, next_power_of_2(kh.shape[1]))
    warps = _warps(block_hq + block_hk, block_d)
    launch(_rotary_kernel, (tokens,), positions, qh, kh, cos_sin_cache, qh.shape[1], kh.shape[1], qh.stride(0),
           qh.stride(1), kh.stride(0), kh.stride(1), cos_sin_cache.stride(0), half,
           IS_NEOX=is_neox, BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_D=block_d, num_warps=warps)
    return q, k


def rotate_reference_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    """Rotate the first 2*cos.shape[-1] dims of x [T, H, D] in place (fp32 maths, each result rounded
    once to x's dtype); cos, sin: [T, rot_dim/2] fp32. Returns x."""
    half = cos.shape[-1]
    x1, x2 = (x[..., :half], x[..., half:2 * half]) if is_neox else (x[..., 0:2 * half:2], x[..., 1:2 * half:2])
    f1, f2 = x1.float(), x2.float()  # for fp32 x these are x1, x2 themselves: both results first, then store
    cos, sin = cos[:, None, :], sin[:, None, :]
    o1 = torch.addcmul(f1 * cos, f2, sin, value=-1.0)  # x1 cos - x2 sin
    o2 = torch.addcmul(f2 * cos, f1, sin)  # x2 cos + x1 sin
    x1.copy_(o1)
    x2.copy_(o2)
    return x


def rotary_embedding_reference(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                               cos_sin_cache: torch.Tensor, head_size: int,
                               is_neox: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE of q and k in place (NeoX halves or GPT-J pairs, fp32 maths); returns (q, k)."""
    cos, sin = cos_sin_cache.index_select(0, positions.long()).float().chunk(2, dim=-1)
    qh, kh = heads_view(q, head_size), heads_view(k, head_size)
    both = _one_block(qh, kh)
    for heads in ((both,) if both is not None else (qh, kh)):
        rotate_reference_(heads, cos, sin, is_neox)
    return q, k


def _one_block(qh: torch.Tensor, kh: torch.Tensor) -> torch.Tensor | None:
    """q and k heads [T, H, D] as one [T, Hq + Hkv, D] view when k's heads follow q's in memory, as in a
    fused QKV projection's output (one rotation instead of two halves the small CPU ops), else None."""
    same_layout = qh.dtype == kh.dtype and qh.stride() == kh.stride() and qh.shape[0] == kh.shape[0]
    if not same_layout or qh.shape[0] == 0 or qh.stride(1) != qh.shape[2] or qh.stride(2) != 1:
        return None
    if kh.data_ptr() != qh.data_ptr() + qh.shape[1] * qh.stride(1) * qh.element_size():
        return None
    return qh.as_strided((qh.shape[0], qh.shape[1] + kh.shape[1], qh.shape[2]), qh.stride())


def _inverse_frequencies(rot_dim: int, base: float, rope_scaling: dict | None) -> torch.Tensor:
    """Per-pair inverse frequencies, computed as HF transformers does (fp32)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim))
    kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type must be one of {ROPE_TYPES}, got {kind!r}")
    if kind == "linear":
        return inv_freq / rope_scaling["factor"]
    if kind == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        factor, low, high = rope_scaling["factor"], rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
        old_len = rope_scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, blended, scaled)
    return inv_freq


def rope_cos_sin_cache(head_dim: int, max_pos: int, base: float = 10000.0, rope_scaling: dict | None = None,
                       dtype: torch.dtype = torch.float32, rotary_dim: int | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """[max_pos, rot_dim] rows [cos | sin] of position * inverse frequency (HF's values, fp32 maths)."""
    rot_dim = head_dim if rotary_dim is None else rotary_dim
    if head_dim <= 0 or rot_dim <= 0 or rot_dim % 2 or rot_dim > head_dim:
        raise ValueError(f"rotary_dim must be even and in 2..head_dim ({head_dim}), got {rot_dim}")
    if max_pos < 0:
        raise ValueError(f"max_pos must be >= 0, got {max_pos}")
    if not base > 0:
        raise ValueError(f"base must be > 0, got {base}")
    inv_freq = _inverse_frequencies(rot_dim, base, rope_scaling)
    freqs = torch.arange(max_pos, dtype=torch.int64).float()[:, None] * inv_freq
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype=dtype, device=device)


def check_rope_args(positions: torch.Tensor, cos_sin_cache: torch.Tensor, tokens: int, head_size: int) -> None:
    """Shared checks of the positions and cos/sin cache of a RoPE call."""
    check_tensor("positions", positions, dtypes=INT_DTYPES, min_dim=1, max_dim=1)
    if positions.shape[0] != tokens:
        raise ValueError(f"positions must have one entry per token ({tokens}), got shape {tuple(positions.shape)}")
    check_tensor("cos_sin_cache", cos_sin_cache, min_dim=2, max_dim=2)
    rot_dim = cos_sin_cache.shape[1]
    if rot_dim % 2 or rot_dim > head_size or cos_sin_cache.stride(1) != 1:
        raise ValueError(f"cos_sin_cache must be [max_pos, rot_dim] with rot_dim even, <= head_size ({head_size}) "
                         f"and unit-stride, got shape {tuple(cos_sin_cache.shape)}")


def check_heads(name: str, t: torch.Tensor, head_size: int) -> None:
    """t must be [T, H*head_size] or [T, H, head_size] with a unit-stride last dim (written in place)."""
    check_tensor(name, t, min_dim=2, max_dim=3)
    bad_width = t.shape[-1] % head_size != 0 if t.dim() == 2 else t.shape[-1] != head_size
    if bad_width:
        raise ValueError(f"{name} must be [T, heads*{head_size}] or [T, heads, {head_size}], got {tuple(t.shape)}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must have a unit-stride last dim (it is updated in place)")


def _validate(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
              head_size: int, is_neox: bool = True) -> None:
    if not isinstance(head_size, int) or head_size <= 0:
        raise ValueError(f"head_size must be a positive int, got {head_size!r}")
    check_heads("q", q, head_size)
    check_heads("k", k, head_size)
    if k.dtype != q.dtype or k.shape[0] != q.shape[0]:
        raise ValueError(f"k must match q in dtype and tokens ({q.dtype}, {q.shape[0]}), got {k.dtype}, {k.shape[0]}")
    check_rope_args(positions, cos_sin_cache, q.shape[0], head_size)
    check_same_device(positions=positions, q=q, k=k, cos_sin_cache=cos_sin_cache)


def _bench_case(rows: int, dtype: torch.dtype, device: str, q_heads: int = 32, kv_heads: int = 8,
                head_dim: int = 128) -> BenchCase:
    q = torch.randn(rows, q_heads * head_dim, dtype=dtype, device=device)
    k = torch.randn(rows, kv_heads * head_dim, dtype=dtype, device=device)
    cache = rope_cos_sin_cache(head_dim, max(rows, 1), 1e6, device=device)
    positions = torch.arange(rows, device=device)
    qk_bytes = 2 * (q.numel() + k.numel()) * q.element_size()
    return BenchCase((positions, q, k, cache, head_dim, True),
                     bytes_moved=qk_bytes + rows * (head_dim * 4 + positions.element_size()))


rotary_embedding = register("rotary_embedding", reference=rotary_embedding_reference,
                            triton=rotary_embedding_triton, validate=_validate, bench_case=_bench_case)
