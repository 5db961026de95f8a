"""varlen_attention: the Triton kernel against the reference on mixed prefill / extend / decode batches."""
import pytest
import torch
import torch.nn.functional as F

from flagstack.ops import attention, use_backend
from flagstack.ops.attention.paged_decode import paged_decode_reference
from flagstack.ops.attention.varlen import (VarlenConfig, varlen_attention_reference,
                                            varlen_attention_triton, varlen_config)
from tests.ops.attention.paging import build_paged
from tests.ops.helpers import DEVICE, assert_close, gpu_only


def make_case(lens, news, group, head_dim, block_size, dtype, kv_heads=1, shared_blocks=0):
    batch = build_paged(lens, kv_heads, head_dim, block_size, dtype, shared_blocks)
    q = torch.randn(sum(news), kv_heads * group, head_dim, device=DEVICE).to(dtype)
    cu = torch.tensor([0] + news, device=DEVICE).cumsum(0).to(torch.int32)
    return (q, batch.k_cache, batch.v_cache, cu, batch.seq_lens, batch.block_tables, head_dim ** -0.5)


def check(lens, news, group, head_dim, block_size, dtype, window=None, softcap=None, config=None,
          atol=1e-4, **kw):
    args = make_case(lens, news, group, head_dim, block_size, dtype, **kw)
    out = varlen_attention_triton(*args, window, softcap, config=config)
    assert_close(out, varlen_attention_reference(*args, window, softcap), atol=atol)


# a mixed step: full prefill, prefill chunk over a cached prefix, two decode rows, an idle sequence
MIXED_LENS, MIXED_NEWS = [19, 40, 16, 1, 9], [19, 13, 1, 1, 0]


@pytest.mark.parametrize("group, head_dim, block_size, dtype, block_m", [
    (1, 64, 16, torch.float32, 16), (4, 128, 16, torch.float16, 32), (8, 64, 32, torch.float16, 64),
    (4, 64, 64, torch.float32, 16)])
def test_mixed_batch_gqa_head_dims(group, head_dim, block_size, dtype, block_m):
    check(MIXED_LENS, MIXED_NEWS, group, head_dim, block_size, dtype,
          config=VarlenConfig(block_m=block_m, block_n=16))


def test_half_precision_p_without_split():
    # P rounded to fp16 once, as flash kernels do: errors up to ~5e-4 on outputs of ~0.1-1
    check(MIXED_LENS, MIXED_NEWS, 4, 64, 16, torch.float16, atol=1e-3,
          config=VarlenConfig(block_m=32, block_n=16, split_p=False))


def test_group_not_a_power_of_two_and_two_kv_heads():
    check([12, 20], [5, 20], 3, 64, 16, torch.float16, kv_heads=2, config=VarlenConfig(block_m=16, block_n=16))


def test_shared_prefix_pages():
    check([40, 36], [8, 4], 2, 64, 16, torch.float32, shared_blocks=2, config=VarlenConfig(block_m=16, block_n=16))


@pytest.mark.parametrize("window, softcap", [(1, None), (7, None), (None, 2.5), (20, 5.0)])
def test_sliding_window_and_softcap(window, softcap):
    check([30, 12], [17, 3], 2, 64, 16, torch.float16, window=window, softcap=softcap,
          config=VarlenConfig(block_m=16, block_n=16))


def test_decode_rows_agree_with_paged_decode():
    args = make_case([5, 23, 64], [1, 1, 1], 4, 64, 16, torch.float32)
    q, k_cache, v_cache, _, seq_lens, tables, scale = args
    out = varlen_attention_triton(*args)
    assert_close(out, paged_decode_reference(q, k_cache, v_cache, seq_lens, tables, scale))


def test_default_config():
    assert varlen_config(4096, 1, 4, 128) == VarlenConfig(128, 64, 8, 3)
    assert varlen_config(64, 64, 4, 128).block_m == 16  # decode-heavy: one token x 4 heads per row group
    assert varlen_config(10, 1, 32, 64).block_m == 128
    assert varlen_config(8, 1, 1, 256).block_n == 32


def test_empty_inputs_and_dispatch():
    args = make_case([3], [0], 2, 64, 16, torch.float32)
    assert varlen_attention_triton(*args).shape == (0, 2, 64)
    q, k_cache, v_cache, _, seq_lens, tables, scale = args
    no_seqs = varlen_attention_triton(q, k_cache, v_cache, torch.zeros(1, dtype=torch.int32, device=DEVICE),
                                      seq_lens[:0], tables[:0], scale)
    assert no_seqs.shape == (0, 2, 64)
    args = make_case([9], [4], 2, 64, 16, torch.float32)
    with use_backend("triton"):
        assert_close(attention.varlen_attention(*args), varlen_attention_reference(*args))


def test_errors():
    q, k_cache, v_cache, cu, seq_lens, tables, scale = make_case([9, 4], [4, 1], 2, 64, 16, torch.float32)
    with pytest.raises(ValueError, match="num_seqs \\+ 1"):
        attention.varlen_attention(q, k_cache, v_cache, cu[:-1], seq_lens, tables, scale)
    with pytest.raises(ValueError, match="cu_seqlens_q must have dtype"):
        attention.varlen_attention(q, k_cache, v_cache, cu.float(), seq_lens, tables, scale)
    with pytest.raises(ValueError, match="q must have 3 dimensions"):
        attention.varlen_attention(q[0], k_cache, v_cache, cu, seq_lens, tables, scale)
    with pytest.raises(ValueError, match="block_m"):
        varlen_attention_triton(q, k_cache, v_cache, cu, seq_lens, tables, scale,
                                config=VarlenConfig(block_m=1))


@gpu_only
def test_qwen3_prefill_4096_bf16_vs_sdpa():
    # one 4096-token causal prefill: within bf16 tolerance of the fp32 reference, and no further from
    # it than SDPA (flash) on the contiguous tensors, which rounds P to bf16 (up to ~3e-3 off there)
    torch.manual_seed(0)
    args = make_case([4096], [4096], 4, 128, 16, torch.bfloat16, kv_heads=8)
    q, k_cache, v_cache, cu, seq_lens, tables, scale = args
    out = varlen_attention_triton(*args)
    exact = varlen_attention_reference(*args)
    k = k_cache[tables[0, :256].long()].flatten(0, 1).transpose(0, 1)[None]
    v = v_cache[tables[0, :256].long()].flatten(0, 1).transpose(0, 1)[None]
    sdpa = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k, v, is_causal=True, scale=scale,
                                          enable_gqa=True)[0].transpose(0, 1)
    assert_close(out, exact)
    assert (out.float() - exact.float()).abs().max() <= (sdpa.float() - exact.float()).abs().max()


@gpu_only
def test_qwen3_chunked_prefill_over_cache_bf16():
    lens = [1024 + 3072 + s for s in range(16)]
    check(lens, [1024] * 15 + [1], 4, 128, 16, torch.bfloat16, kv_heads=8)
    check(lens, [1024] * 15 + [1], 4, 128, 16, torch.bfloat16, kv_heads=8, atol=1e-3,
          config=VarlenConfig(split_p=False))  # P rounded to bf16 once: up to ~5e-4 on outputs ~0.02
