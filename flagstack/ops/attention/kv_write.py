"""KV write: store the step's new K and V rows into their cache slots (slot -1 = padding, skipped).

slot = block_id * block_size + offset. Memory traffic: read and write 2 * T * Hkv * D elements.
"""
from __future__ import annotations

import torch

from flagstack.ops.registry import register


def store_kv_reference(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write key/value [T, Hkv, D] into k_cache/v_cache [blocks, block_size, Hkv, D] in place."""
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    k_flat = k_cache.view(-1, *k_cache.shape[2:])
    v_flat = v_cache.view(-1, *v_cache.shape[2:])
    k_flat[slots] = key[valid].to(k_cache.dtype)
    v_flat[slots] = value[valid].to(v_cache.dtype)


store_kv = register("store_kv", reference=store_kv_reference)
