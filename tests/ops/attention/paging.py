"""Build paged KV caches from contiguous per-sequence K/V, with shuffled and shared pages."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tests.ops.helpers import DEVICE


@dataclass
class PagedBatch:
    keys: list[torch.Tensor]  # per sequence [L, Hkv, D], contiguous: what SDPA sees
    values: list[torch.Tensor]
    k_cache: torch.Tensor  # [blocks, block_size, Hkv, D], the same data in shuffled pages
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [S, max_blocks + 1] int32
    seq_lens: torch.Tensor  # [S] int32


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def build_paged(lens: list[int], kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
                shared_blocks: int = 0, device: str = DEVICE) -> PagedBatch:
    """Random K/V per sequence, also written into a paged cache whose pages are out of order.

    The first `shared_blocks` pages of every sequence are one set of pages holding one common
    prefix (as a prefix-cache hit leaves them). Unused cache slots and table columns hold random
    data / valid page ids, so reading past a sequence's end shows up in the results.
    """
    shared = shared_blocks * block_size
    if any(n < shared for n in lens):
        raise ValueError("every sequence must cover the shared prefix")
    prefix_k = torch.randn(shared, kv_heads, head_dim, device=device).to(dtype)
    prefix_v = torch.randn(shared, kv_heads, head_dim, device=device).to(dtype)
    keys, values = [], []
    for n in lens:
        keys.append(torch.cat([prefix_k, torch.randn(n - shared, kv_heads, head_dim, device=device).to(dtype)]))
        values.append(torch.cat([prefix_v, torch.randn(n - shared, kv_heads, head_dim, device=device).to(dtype)]))
    own = [cdiv(n, block_size) - shared_blocks for n in lens]
    total = shared_blocks + sum(own) + 2
    pages = torch.randperm(total).tolist()
    shared_pages, next_page = pages[:shared_blocks], shared_blocks
    width = max([shared_blocks + o for o in own], default=0) + 1
    table = torch.randint(0, total, (len(lens), width), dtype=torch.int32)
    shape = (total, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, device=device).to(dtype)
    v_cache = torch.randn(shape, device=device).to(dtype)
    for s, n in enumerate(lens):
        seq_pages = shared_pages + pages[next_page:next_page + own[s]]
        next_page += own[s]
        table[s, :len(seq_pages)] = torch.tensor(seq_pages, dtype=torch.int32)
        for j, page in enumerate(seq_pages):
            rows = slice(j * block_size, min((j + 1) * block_size, n))
            k_cache[page, :rows.stop - rows.start] = keys[s][rows]
            v_cache[page, :rows.stop - rows.start] = values[s][rows]
    return PagedBatch(keys, values, k_cache, v_cache, table.to(device),
                      torch.tensor(lens, dtype=torch.int32, device=device))
