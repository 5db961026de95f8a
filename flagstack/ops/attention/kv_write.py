"""KV write: store the step's new K and V rows into their cache slots (slot -1 = padding, skipped).

slot = block_id * block_size + offset. Memory traffic: read and write 2 * T * Hkv * D elements
(one program per token moves its K and V rows for all kv heads: 2 * Hkv * D elements each way).
An fp8 (e4m3) cache stores clamp(k / k_scale, +-448) and clamp(v / v_scale, +-448), rounded to nearest.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagstack.ops.attention.common import FP8_KV, FP8_MAX, INDEX_DTYPES, check_cache, check_kv_scales
from flagstack.ops.checks import check_same_device, check_tensor
from flagstack.ops.host import cdiv, next_power_of_2
from flagstack.ops.launch_cache import launch
from flagstack.ops.pdl import pdl_launch, pdl_wait
from flagstack.ops.registry import BenchCase, register


@triton.jit
def _round_to_e4m3(x, FP8_MAX: tl.constexpr):
    """x (fp32) saturated at +-FP8_MAX and rounded to the nearest e4m3 value, ties to even, still in fp32:
    the cast to fp8 after it is exact. (Triton's interpreter drops the carry when a cast rounds up across
    a power of two, 7.97 -> 4.0; the GPU's cast rounds right, and gets the same values from here.)"""
    x = tl.minimum(tl.maximum(x, -FP8_MAX), FP8_MAX)
    bits = x.to(tl.int32, bitcast=True)
    # normals: keep 3 of fp32's 23 mantissa bits, adding half a step (less one unless the kept lsb is odd)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)
    # below 2^-6 e4m3 steps by 2^-9: fp32 addition rounds to that step in [2^14, 2^15), ties to even;
    # done on |x| so that a tiny negative value keeps its sign (-0.0, as the cast gives)
    subnormal = (tl.abs(x) + 16384.0) - 16384.0
    subnormal = tl.where(x < 0, -subnormal, subnormal)
    return tl.where(tl.abs(x) < 0.015625, subnormal, normal)


@triton.jit
def _store_kv_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                     key_stride_t, key_stride_h, value_stride_t, value_stride_h,
                     kc_stride_b, kc_stride_t, kc_stride_h, vc_stride_b, vc_stride_t, vc_stride_h,
                     num_kv_heads, k_scale_inv, v_scale_inv, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_H: tl.constexpr, QUANTIZE: tl.constexpr, FP8_MAX: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        heads = tl.arange(0, BLOCK_H)[:, None]
        dims = tl.arange(0, HEAD_DIM)[None, :]
        mask = heads < num_kv_heads
        block, offset = slot // BLOCK_SIZE, slot % BLOCK_SIZE
        k = tl.load(key_ptr + token * key_stride_t + heads * key_stride_h + dims, mask=mask)
        v = tl.load(value_ptr + token * value_stride_t + heads * value_stride_h + dims, mask=mask)
        if QUANTIZE:  # fp8 cache: scale in fp32, saturate at the format's largest finite value
            k = _round_to_e4m3(k.to(tl.float32) * k_scale_inv, FP8_MAX)
            v = _round_to_e4m3(v.to(tl.float32) * v_scale_inv, FP8_MAX)
        tl.store(k_cache_ptr + block * kc_stride_b + offset * kc_stride_t + heads * kc_stride_h + dims,
                 k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + block * vc_stride_b + offset * vc_stride_t + heads * vc_stride_h + dims,
                 v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv_triton(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, slot_mapping: torch.Tensor, k_scale: float = 1.0,
                    v_scale: float = 1.0) -> None:
    """Write key/value [T, Hkv, D] into their cache slots with one launch for all tokens."""
    if key.shape[0] == 0:
        return
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    block_size, kv_heads, head_dim = k_cache.shape[1:]
    launch(_store_kv_kernel, (key.shape[0],),
           key, value, k_cache, v_cache, slot_mapping,
           key.stride(0), key.stride(1), value.stride(0), value.stride(1),
           k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
           v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
           kv_heads, 1.0 / k_scale, 1.0 / v_scale, BLOCK_SIZE=block_size, HEAD_DIM=head_dim,
           BLOCK_H=next_power_of_2(kv_heads), QUANTIZE=k_cache.dtype == FP8_KV, FP8_MAX=FP8_MAX,
           num_warps=4 if kv_heads * head_dim >= 1024 else 1, **pdl_launch(key.device))


def quantize_fp8(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x / scale in fp32, saturated to +-448, rounded to the nearest e4m3 value."""
    return (x.float() * (1.0 / scale)).clamp_(-FP8_MAX, FP8_MAX).to(FP8_KV)


def store_kv_reference(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, slot_mapping: torch.Tensor, k_scale: float = 1.0,
                       v_scale: float = 1.0) -> None:
    """Write key/value [T, Hkv, D] into k_cache/v_cache [blocks, block_size, Hkv, D] in place."""
    slots = slot_mapping.long()  # index_copy_ takes int64 indices
    if slots.numel() and int(slots.min()) < 0:  # padding rows (CUDA-graph batches) are not stored
        valid = slots >= 0
        slots, key, value = slots[valid], key[valid], value[valid]
    if k_cache.dtype == FP8_KV:  # CPU torch has no fp8 index_copy_: the quantized bytes move as uint8
        key, value = quantize_fp8(key, k_scale).view(torch.uint8), quantize_fp8(value, v_scale).view(torch.uint8)
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
    if k_cache.is_contiguous() and v_cache.is_contiguous():
        k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, key.to(k_cache.dtype))
        v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, value.to(v_cache.dtype))
    else:  # e.g. a head-major cache seen through transposed strides: an indexed write takes any strides
        blocks, offsets = slots // k_cache.shape[1], slots % k_cache.shape[1]
        k_cache[blocks, offsets] = key.to(k_cache.dtype)
        v_cache[blocks, offsets] = value.to(v_cache.dtype)


def _validate(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              slot_mapping: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    _, kv_heads, head_dim = check_cache(k_cache, v_cache)
    check_kv_scales(k_cache, k_scale, v_scale)
    check_tensor("key", key, min_dim=3, max_dim=3)
    check_tensor("value", value, min_dim=3, max_dim=3)
    if key.shape != value.shape or tuple(key.shape[1:]) != (kv_heads, head_dim):
        raise ValueError(f"key and value must both be [T, {kv_heads}, {head_dim}] to match the cache, "
                         f"got {tuple(key.shape)} and {tuple(value.shape)}")
    check_tensor("slot_mapping", slot_mapping, dtypes=INDEX_DTYPES, min_dim=1, max_dim=1)
    if slot_mapping.shape[0] != key.shape[0]:
        raise ValueError(f"slot_mapping must have one slot per token ({key.shape[0]}), "
                         f"got shape {tuple(slot_mapping.shape)}")
    check_same_device(key=key, value=value, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)


def _bench_case(rows: int, dtype: torch.dtype, device: str, kv_heads: int = 8, head_dim: int = 128,
                block_size: int = 16) -> BenchCase:
    """`rows` new tokens (Qwen3-4B kv heads) scattered over a cache with room for twice as many."""
    num_blocks = 2 * cdiv(rows, block_size) + 1
    key = torch.randn(rows, kv_heads, head_dim, dtype=dtype, device=device)
    value = torch.randn_like(key)
    k_cache = torch.zeros(num_blocks, block_size, kv_heads, head_dim, dtype=dtype, device=device)
    slots = torch.randperm(num_blocks * block_size, device=device)[:rows]
    slots[::7] = -1
    return BenchCase((key, value, k_cache, torch.zeros_like(k_cache), slots),
                     bytes_moved=4 * key.numel() * key.element_size())


store_kv = register("store_kv", reference=store_kv_reference, triton=store_kv_triton,
                    validate=_validate, bench_case=_bench_case)
