"""store_kv: the Triton kernel against the reference (slots -1 skipped, strided inputs, dtype casts)."""
import pytest
import torch

from flagstack.ops import attention, use_backend
from flagstack.ops.attention.kv_write import store_kv_reference, store_kv_triton
from tests.ops.helpers import DEVICE, gpu_only


def run_both(key, value, k_cache, v_cache, slots):
    """Caches after the Triton kernel and after the reference, each from the same starting caches."""
    ours = (k_cache.clone(), v_cache.clone())
    store_kv_triton(key, value, *ours, slots)
    ref = (k_cache.clone(), v_cache.clone())
    store_kv_reference(key, value, *ref, slots)
    return ours, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size, kv_heads, head_dim", [(16, 2, 64), (32, 3, 128)])
def test_matches_reference_with_padding_slots(dtype, block_size, kv_heads, head_dim):
    tokens, blocks = 9, 4
    key = torch.randn(tokens, kv_heads, head_dim, device=DEVICE).to(dtype)
    value = torch.randn_like(key)
    k_cache = torch.randn(blocks, block_size, kv_heads, head_dim, device=DEVICE).to(dtype)
    v_cache = torch.randn_like(k_cache)
    slots = torch.randperm(blocks * block_size, device=DEVICE)[:tokens]
    slots[[0, 4]] = -1  # padded rows of a CUDA-graph batch
    ours, ref = run_both(key, value, k_cache, v_cache, slots)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
    assert torch.equal(ours[0].view(-1, kv_heads, head_dim)[slots[1]], key[1])


def test_strided_inputs_int32_slots_and_cast():
    # k and v as views of a fused qkv projection, written into an fp16 cache from fp32
    qkv = torch.randn(5, 4 + 2 + 2, 64, device=DEVICE)
    key, value = qkv[:, 4:6], qkv[:, 6:8]
    k_cache = torch.zeros(2, 16, 2, 64, dtype=torch.float16, device=DEVICE)
    slots = torch.tensor([3, 17, -1, 31, 0], dtype=torch.int32, device=DEVICE)
    ours, ref = run_both(key, value, k_cache, k_cache.clone(), slots)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


def test_head_major_cache_views():
    # a [blocks, kv_heads, block_size, dim] cache passed as a transposed view: both implementations take its strides
    key, value = torch.randn(6, 2, 64, device=DEVICE), torch.randn(6, 2, 64, device=DEVICE)
    k_cache = torch.zeros(3, 2, 16, 64, device=DEVICE).transpose(1, 2)
    slots = torch.tensor([0, 15, 16, -1, 47, 20], device=DEVICE)
    ours, ref = run_both(key, value, k_cache, k_cache.clone(), slots)
    for got in (ours, ref):
        for t in (0, 1, 2, 4, 5):  # token t went to slot slots[t]
            block, offset = divmod(int(slots[t]), 16)
            assert torch.equal(got[0][block, offset], key[t]) and torch.equal(got[1][block, offset], value[t])
        assert int((got[0] != 0).any(-1).sum()) == 2 * 5  # 5 tokens x 2 heads written, the -1 slot skipped


def test_empty_step_and_dispatch():
    k_cache = torch.zeros(2, 16, 1, 16, device=DEVICE)
    empty = torch.empty(0, 1, 16, device=DEVICE)
    store_kv_triton(empty, empty, k_cache, k_cache, torch.empty(0, dtype=torch.long, device=DEVICE))
    assert k_cache.count_nonzero() == 0
    key = torch.ones(1, 1, 16, device=DEVICE)
    with use_backend("triton"):
        attention.store_kv(key, 2 * key, k_cache, k_cache.clone(), torch.tensor([20], device=DEVICE))
    assert torch.equal(k_cache[1, 4], key[0])


def test_errors():
    k_cache = torch.zeros(2, 16, 2, 64)
    key = torch.zeros(3, 2, 64)
    slots = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="key and value"):
        attention.store_kv(key[:, :1], key[:, :1], k_cache, k_cache, slots)
    with pytest.raises(ValueError, match="slot_mapping must have one slot per token"):
        attention.store_kv(key, key, k_cache, k_cache, slots[:2])
    with pytest.raises(ValueError, match="slot_mapping must have dtype"):
        attention.store_kv(key, key, k_cache, k_cache, slots.float())
    with pytest.raises(ValueError, match="v_cache must match"):
        attention.store_kv(key, key, k_cache, k_cache.half(), slots)
    with pytest.raises(ValueError, match="head_dim"):
        attention.store_kv(key[..., :48], key[..., :48], k_cache[..., :48], k_cache[..., :48], slots)


@gpu_only
def test_qwen3_prefill_step_bf16():
    tokens = 4096
    key = torch.randn(tokens, 8, 128, dtype=torch.bfloat16, device=DEVICE)
    value = torch.randn_like(key)
    k_cache = torch.zeros(1024, 16, 8, 128, dtype=torch.bfloat16, device=DEVICE)
    slots = torch.randperm(1024 * 16, device=DEVICE)[:tokens]
    slots[::5] = -1
    ours, ref = run_both(key, value, k_cache, k_cache.clone(), slots)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
