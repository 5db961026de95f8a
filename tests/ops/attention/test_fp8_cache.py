"""fp8 (e4m3) KV cache: quantizing writes and dequantizing reads, against hand-written math.

The kernels read the same fp8 bytes as the references, so they agree closely; the references are
checked against float64 attention over K/V dequantized by hand (fp8 value * scale).
"""
import pytest
import torch

from flagstack.ops import attention
from flagstack.ops.attention.common import FP8_KV
from flagstack.ops.attention.kv_write import store_kv_reference, store_kv_triton
from flagstack.ops.attention.paged_decode import DecodeConfig, paged_decode_reference, paged_decode_triton
from flagstack.ops.attention.varlen import varlen_attention_reference, varlen_attention_triton, varlen_config
from tests.ops.attention.paging import build_paged
from tests.ops.attention.test_references import manual_attention
from tests.ops.helpers import DEVICE, assert_close

K_SCALE, V_SCALE = 0.5, 0.25


def by_hand(x, scale):
    """Quantize by the format's definition: x / scale in float64, saturated at +-448, then e4m3."""
    return (x.double() / scale).clamp(-448, 448).float().to(FP8_KV)


def fp8_batch(lens, kv_heads, head_dim, group, shared_blocks=0, q_dtype=torch.float32):
    """Paged fp8 caches (K and V scaled by K_SCALE / V_SCALE), q, and per-sequence dequantized K/V."""
    batch = build_paged(lens, kv_heads, head_dim, 16, torch.float32, shared_blocks)
    k_cache, v_cache = by_hand(batch.k_cache, K_SCALE), by_hand(batch.v_cache, V_SCALE)
    keys = [by_hand(k, K_SCALE).double() * K_SCALE for k in batch.keys]
    values = [by_hand(v, V_SCALE).double() * V_SCALE for v in batch.values]
    q = torch.randn(len(lens), kv_heads * group, head_dim, device=DEVICE).to(q_dtype)
    return batch, k_cache, v_cache, keys, values, q


@pytest.mark.parametrize("store", [store_kv_reference, store_kv_triton])
def test_store_quantizes_by_hand_and_saturates(store):
    key = torch.randn(6, 2, 64, device=DEVICE) * 3
    key[0, 0, :4] = torch.tensor([1000.0, -1000.0, 224.0, 1e-3])  # saturates both ways; 448 exactly; tiny
    value = torch.randn_like(key)
    k_cache = torch.zeros(4, 16, 2, 64, device=DEVICE).to(FP8_KV)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([3, -1, 17, 40, 0, 63], device=DEVICE)
    store(key, value, k_cache, v_cache, slots, k_scale=K_SCALE, v_scale=V_SCALE)
    flat_k, flat_v = k_cache.view(-1, 2, 64), v_cache.view(-1, 2, 64)
    kept = slots >= 0
    # values, not bytes: the interpreter's cast writes -0.0 as +0.0
    assert torch.equal(flat_k[slots[kept]].float(), by_hand(key[kept], K_SCALE).float())
    assert torch.equal(flat_v[slots[kept]].float(), by_hand(value[kept], V_SCALE).float())
    assert flat_k[3, 0, :3].float().tolist() == [448.0, -448.0, 448.0]
    untouched = torch.ones(64, dtype=torch.bool, device=DEVICE)
    untouched[slots[kept]] = False
    assert flat_k[untouched].float().abs().sum() == 0  # the padding row wrote nothing


def test_store_rounds_ties_to_even_on_every_fp8_step():
    # every finite e4m3 value, the midpoints between neighbours (ties: to the even one), and the fp32
    # values just beside each midpoint, against torch's cast
    values = torch.arange(256, dtype=torch.uint8).view(FP8_KV).float()
    values = values[torch.isfinite(values)].unique()
    mid = (values[1:] + values[:-1]) / 2
    x = torch.cat([values, mid, torch.nextafter(mid, mid + 1), torch.nextafter(mid, mid - 1),
                   torch.tensor([500.0, -500.0, 449.0, 464.0, 1e-9, -1e-9])])
    x = torch.nn.functional.pad(x, (0, -x.numel() % 64)).view(-1, 1, 64).to(DEVICE)
    k_cache = torch.zeros(x.shape[0], 1, 1, 64, device=DEVICE).to(FP8_KV)
    v_cache = torch.zeros_like(k_cache)
    store_kv_triton(x, x, k_cache, v_cache, torch.arange(x.shape[0], device=DEVICE))
    assert torch.equal(k_cache.view_as(x).float(), x.clamp(-448, 448).to(FP8_KV).float())


@pytest.mark.parametrize("group", [1, 4])
def test_decode_reads_fp8_pages(group):
    lens = [1, 15, 16, 17, 45]
    batch, k_cache, v_cache, keys, values, q = fp8_batch(lens, 2, 64, group, shared_blocks=0)
    args = (q, k_cache, v_cache, batch.seq_lens, batch.block_tables, 0.125)
    ref = paged_decode_reference(*args, k_scale=K_SCALE, v_scale=V_SCALE)
    for s, n in enumerate(lens):
        expected = manual_attention(q[s:s + 1], keys[s], values[s], [n - 1], 0.125)
        assert_close(ref[s], expected[0].float(), atol=1e-5)
    for config in (DecodeConfig(block_n=16), DecodeConfig(block_n=16, num_splits=3)):
        ours = paged_decode_triton(*args, k_scale=K_SCALE, v_scale=V_SCALE, config=config)
        assert_close(ours, ref, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_q_over_fp8_pages(dtype):
    # the kernels' products then run in fp16 (q rounded to it): within the half-precision tolerance
    lens = [1, 17, 45]
    batch, k_cache, v_cache, _, _, q = fp8_batch(lens, 2, 64, 4, q_dtype=dtype)
    args = (q, k_cache, v_cache, batch.seq_lens, batch.block_tables, 0.125)
    ref = paged_decode_reference(*args, k_scale=K_SCALE, v_scale=V_SCALE)
    assert ref.dtype == dtype
    assert_close(paged_decode_triton(*args, k_scale=K_SCALE, v_scale=V_SCALE, config=DecodeConfig(block_n=16)), ref)
    cu = torch.arange(len(lens) + 1, dtype=torch.int32, device=DEVICE)  # one new token each, as decode rows
    varlen = varlen_attention_triton(q, k_cache, v_cache, cu, batch.seq_lens, batch.block_tables, 0.125,
                                     k_scale=K_SCALE, v_scale=V_SCALE)
    assert_close(varlen, ref)


def test_varlen_reads_fp8_pages_with_a_shared_prefix():
    lens, news = [19, 40, 33, 17], [19, 13, 1, 0]
    batch, k_cache, v_cache, keys, values, _ = fp8_batch(lens, 2, 64, 2, shared_blocks=1)
    q = torch.randn(sum(news), 4, 64, device=DEVICE)
    cu = torch.tensor([0] + news, device=DEVICE).cumsum(0).to(torch.int32)
    args = (q, k_cache, v_cache, cu, batch.seq_lens, batch.block_tables, 0.125)
    ref = varlen_attention_reference(*args, k_scale=K_SCALE, v_scale=V_SCALE)
    start = 0
    for s, (n, new) in enumerate(zip(lens, news)):
        expected = manual_attention(q[start:start + new], keys[s], values[s], list(range(n - new, n)), 0.125)
        assert_close(ref[start:start + new], expected.float(), atol=1e-5)
        start += new
    assert_close(varlen_attention_triton(*args, k_scale=K_SCALE, v_scale=V_SCALE), ref, atol=1e-5)


def test_fp8_prefill_config_rounds_p_once_within_half_precision():
    # prefill over fp8 pages defaults to a single fp16-rounded P.V (no exact split): P's rounding,
    # 2^-11 relative, stays far under the fp8 values' own 2^-4 -- here within 2e-3 of exact attention
    lens = [72, 130]
    batch, k_cache, v_cache, keys, values, _ = fp8_batch(lens, 1, 64, 2)
    cfg = varlen_config(sum(lens), len(lens), 2, 64, fp8=True)
    assert (cfg.block_m, cfg.block_n, cfg.split_p) == (128, 128, False)
    q = torch.randn(sum(lens), 2, 64, device=DEVICE).half()
    cu = torch.tensor([0] + lens, device=DEVICE).cumsum(0).to(torch.int32)
    ours = varlen_attention_triton(q, k_cache, v_cache, cu, batch.seq_lens, batch.block_tables, 0.125,
                                   k_scale=K_SCALE, v_scale=V_SCALE)
    start = 0
    for s, n in enumerate(lens):
        expected = manual_attention(q[start:start + n].float(), keys[s], values[s], list(range(n)), 0.125)
        assert_close(ours[start:start + n].float(), expected.float(), atol=2e-3)
        start += n


def test_fp8_error_against_the_unquantized_cache_is_small():
    # e4m3 keeps 3 mantissa bits: ~3% relative error per element, much less once averaged by attention
    lens = [40, 64]
    batch, k_cache, v_cache, _, _, q = fp8_batch(lens, 2, 64, 4)
    exact = paged_decode_reference(q, batch.k_cache, batch.v_cache, batch.seq_lens, batch.block_tables, 0.125)
    fp8 = paged_decode_reference(q, k_cache, v_cache, batch.seq_lens, batch.block_tables, 0.125,
                                 k_scale=K_SCALE, v_scale=V_SCALE)
    err = (fp8 - exact).abs().max().item()
    assert 1e-4 < err < 0.05, err  # lossy, but not far off


def test_scale_errors():
    batch = build_paged([5], 1, 64, 16, torch.float32)
    q = torch.randn(1, 2, 64, device=DEVICE)
    fp8 = batch.k_cache.to(FP8_KV)
    args = (q, fp8, fp8, batch.seq_lens, batch.block_tables, 0.1)
    for name, bad in (("k_scale", 0.0), ("v_scale", -1.0), ("k_scale", float("inf")), ("v_scale", "1")):
        with pytest.raises(ValueError, match=f"{name} must be a positive finite number"):
            attention.paged_decode(*args, **{name: bad})
    with pytest.raises(ValueError, match="k_scale must be 1 for a torch.float32 cache"):
        attention.paged_decode(q, batch.k_cache, batch.v_cache, batch.seq_lens, batch.block_tables, 0.1,
                               k_scale=2.0)
    key = torch.randn(1, 1, 64, device=DEVICE)
    with pytest.raises(ValueError, match="v_scale must be 1"):
        attention.store_kv(key, key, batch.k_cache, batch.v_cache, torch.zeros(1, dtype=torch.long, device=DEVICE),
                           v_scale=0.5)
