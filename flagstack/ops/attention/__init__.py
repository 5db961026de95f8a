"""Attention over a paged KV cache.

Cache layout (both K and V): [num_blocks, block_size, num_kv_heads, head_dim]. A sequence's tokens
live in the blocks its row of `block_tables` lists, in order; token t sits in block
block_tables[s, t // block_size] at offset t % block_size. A step first writes the new tokens' K/V
with `store_kv`, then attends over the cache, so new tokens and cached prefix are read the same way.
"""
from flagstack.ops.attention.kv_write import store_kv
from flagstack.ops.attention.paged_decode import paged_decode
from flagstack.ops.attention.varlen import varlen_attention

__all__ = ["store_kv", "paged_decode", "varlen_attention"]
