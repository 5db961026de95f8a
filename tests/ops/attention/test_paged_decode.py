"""paged_decode: the split-K Triton kernel against the reference over shuffled, shared pages."""
import pytest
import torch

from flagstack.ops import attention, use_backend
from flagstack.ops.attention.paged_decode import (DecodeConfig, decode_config, gather_buffer,
                                                  paged_decode_reference, paged_decode_triton)
from tests.ops.attention.paging import build_paged
from tests.ops.helpers import DEVICE, assert_close, gpu_only


def check(lens, group, head_dim, block_size, dtype, kv_heads=1, window=None, softcap=None, config=None,
          shared_blocks=0, atol=1e-4):
    batch = build_paged(lens, kv_heads, head_dim, block_size, dtype, shared_blocks)
    q = torch.randn(len(lens), kv_heads * group, head_dim, device=DEVICE).to(dtype)
    args = (q, batch.k_cache, batch.v_cache, batch.seq_lens, batch.block_tables, head_dim ** -0.5, window, softcap)
    out = paged_decode_triton(*args, config=config)
    assert_close(out, paged_decode_reference(*args), atol=atol)


@pytest.mark.parametrize("group, head_dim, block_size, dtype", [
    (1, 64, 16, torch.float32), (4, 128, 16, torch.float16), (8, 64, 32, torch.float16),
    (4, 64, 64, torch.float32)])
def test_context_lengths_gqa_head_dims(group, head_dim, block_size, dtype):
    # 1, block_size - 1, block_size, odd, and longer than a tile (BLOCK_N 16 -> several tiles)
    lens = [1, block_size - 1, block_size, 37, 2 * block_size + 5]
    check(lens, group, head_dim, block_size, dtype, config=DecodeConfig(block_n=16))


def test_half_precision_p_without_split():
    # P rounded to fp16 once, as flash kernels do: errors up to ~5e-4 on outputs of ~0.1-1
    check([9, 40], 4, 64, 16, torch.float16, atol=1e-3, config=DecodeConfig(block_n=16, split_p=False))


@pytest.mark.parametrize("splits", [2, 5])
def test_split_k_and_empty_splits(splits):
    # with 5 splits the length-3 sequence leaves most splits empty; the merge must ignore them
    check([3, 50, 64], 4, 64, 16, torch.float16, kv_heads=2, config=DecodeConfig(block_n=16, num_splits=splits))


def test_shared_prefix_pages():
    check([33, 40, 48], 2, 64, 16, torch.float32, shared_blocks=2, config=DecodeConfig(block_n=16, num_splits=2))


@pytest.mark.parametrize("window, softcap", [(1, None), (10, None), (None, 2.5), (20, 5.0)])
def test_sliding_window_and_softcap(window, softcap):
    check([5, 17, 45], 4, 64, 16, torch.float16, window=window, softcap=softcap,
          config=DecodeConfig(block_n=16, num_splits=2))


def test_default_config_splits_small_batches_only():
    cpu = torch.device("cpu")  # sm_count is 8 there: unsplit from 8 programs, else target 32
    assert decode_config(1, 8, 8192, 128, cpu).num_splits == 1
    assert decode_config(1, 2, 8192, 128, cpu).num_splits == 16
    assert decode_config(1, 1, 31, 128, cpu).num_splits == 1  # too short to split
    assert decode_config(1, 1, 100, 128, cpu).num_splits == 3  # 32 tokens a split at least
    assert decode_config(64, 8, 8192, 128, cpu).num_splits == 1
    assert decode_config(1, 1, 1 << 20, 128, cpu).num_splits == 32
    assert decode_config(64, 8, 8192, 128, cpu, fp8=True).num_stages == 6  # an fp8 tile is half the bytes


def test_empty_batch_and_dispatch():
    batch = build_paged([5], 1, 64, 16, torch.float32)
    q = torch.empty(0, 2, 64, device=DEVICE)
    out = paged_decode_triton(q, batch.k_cache, batch.v_cache, batch.seq_lens[:0], batch.block_tables[:0], 0.1)
    assert out.shape == (0, 2, 64)
    q = torch.randn(1, 2, 64, device=DEVICE)
    args = (q, batch.k_cache, batch.v_cache, batch.seq_lens, batch.block_tables, 0.1)
    with use_backend("triton"):
        assert_close(attention.paged_decode(*args), paged_decode_reference(*args))


def test_errors():
    batch = build_paged([5, 6], 2, 64, 16, torch.float32)
    q = torch.randn(2, 4, 64, device=DEVICE)
    good = dict(q=q, k_cache=batch.k_cache, v_cache=batch.v_cache, seq_lens=batch.seq_lens,
                block_tables=batch.block_tables, scale=0.1)
    cases = [(dict(q=torch.randn(3, 4, 64, device=DEVICE)), "one token per sequence"),
             (dict(q=torch.randn(2, 3, 64, device=DEVICE)), "multiple of the cache's kv heads"),
             (dict(q=torch.randn(2, 4, 32, device=DEVICE)), "q head_dim"),
             (dict(seq_lens=batch.seq_lens.float()), "seq_lens must have dtype"),
             (dict(block_tables=batch.block_tables[:1]), "one row per sequence"),
             (dict(scale=0.0), "scale must be a positive"),
             (dict(v_cache=batch.v_cache[:, :8]), "v_cache must match")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            attention.paged_decode(**{**good, **change})
    with pytest.raises(ValueError, match="sliding_window"):
        attention.paged_decode(*good.values(), sliding_window=0)
    with pytest.raises(ValueError, match="softcap"):
        attention.paged_decode(*good.values(), softcap=-1.0)


@gpu_only
@pytest.mark.parametrize("batch_size, context", [(256, 2048), (1, 8192)])
def test_qwen3_shapes_bf16(batch_size, context):
    lens = [context - (s * 37) % 300 for s in range(batch_size)]
    check(lens, 4, 128, 16, torch.bfloat16, kv_heads=8)


def test_gather_buffer_is_reused_and_grows():
    cache = torch.zeros(10, 16, 2, 8)
    first = gather_buffer(cache, 4, "k")
    assert first.shape == (4, 16, 2, 8)
    assert gather_buffer(cache, 2, "k").data_ptr() == first.data_ptr()  # smaller: the same memory
    assert gather_buffer(cache, 2, "v").data_ptr() != first.data_ptr()  # V has its own
    assert gather_buffer(cache, 6, "k").shape[0] == 6  # larger: a new buffer
