"""qk_norm_rope vs HF transformers' Qwen3 pieces: Qwen3RMSNorm per head, then apply_rotary_pos_emb; its
store_kv form against caches written by hand."""
import pytest
import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from flagstack.ops import qk_norm_rope, rope_cos_sin_cache, use_backend
from flagstack.ops.qk_norm_rope import qk_norm_rope_reference, qk_norm_rope_triton
from tests.ops.helpers import DEVICE, DTYPES, ON_GPU, assert_close, gpu_only, rows_for_device
from tests.ops.test_rotary import hf_gptj, hf_neox


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def hf_norm_rope(x, weight, positions, eps, is_neox=True, max_pos=None):
    """Qwen3Attention: q_norm(q.view(..., head_dim)) then RoPE, in fp32 on x [T, H, D], cast back."""
    head_dim = weight.shape[0]
    norm = Qwen3RMSNorm(head_dim, eps).to(x.device)
    norm.weight.data.copy_(weight.float())
    normed = norm(x.float())
    rotated = hf_neox(normed, positions, head_dim) if is_neox else hf_gptj(normed, positions, head_dim, max_pos)
    return rotated.to(x.dtype)


def make_case(tokens, hq, hk, head_dim, dtype, max_pos=512, base=1e6):
    q = torch.randn(tokens, hq * head_dim, dtype=dtype, device=DEVICE) * 3
    k = torch.randn(tokens, hk, head_dim, dtype=dtype, device=DEVICE)
    qw, kw = (torch.rand(head_dim, dtype=dtype, device=DEVICE) + 0.5 for _ in range(2))
    positions = torch.randint(0, max_pos, (tokens,), device=DEVICE)
    return q, k, qw, kw, positions, rope_cos_sin_cache(head_dim, max_pos, base, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", rows_for_device([1, 3], [1, 256, 4096]))
@pytest.mark.parametrize("heads", [(32, 8), (5, 1)])
def test_matches_hf_qwen3(heads, tokens, dtype):
    hq, hk = heads
    q, k, qw, kw, positions, cache = make_case(tokens, hq, hk, 128, dtype)
    want_q = hf_norm_rope(q.view(tokens, hq, 128), qw, positions, 1e-6)
    want_k = hf_norm_rope(k, kw, positions, 1e-6)
    out_q, out_k = qk_norm_rope_triton(q, k, qw, kw, positions, cache, 1e-6)
    assert out_q is q and out_k is k
    assert_close(q.view(tokens, hq, 128), want_q)
    assert_close(k, want_k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gptj_style_odd_head_and_fused_qkv_view(dtype):
    q, k, qw, kw, positions, cache = make_case(4, 3, 2, 48, dtype, max_pos=64, base=1e4)  # half = 24: masked
    want_q = hf_norm_rope(q.view(4, 3, 48), qw, positions, 1e-5, False, 64)
    want_k = hf_norm_rope(k, kw, positions, 1e-5, False, 64)
    qk_norm_rope_triton(q, k, qw, kw, positions, cache, 1e-5, is_neox=False)
    assert_close(q.view(4, 3, 48), want_q)
    assert_close(k, want_k)
    qkv = torch.randn(5, 6 * 64, dtype=dtype, device=DEVICE)
    q, k, v = qkv.split([4 * 64, 64, 64], dim=-1)
    v_before, positions = v.clone(), torch.arange(5, device=DEVICE)
    w = torch.ones(64, dtype=dtype, device=DEVICE)
    want_q, want_k = hf_norm_rope(q.reshape(5, 4, 64), w, positions, 1e-6), hf_norm_rope(k.reshape(5, 1, 64), w,
                                                                                        positions, 1e-6)
    qk_norm_rope_triton(q, k, w, w, positions, rope_cos_sin_cache(64, 8, 1e6, device=DEVICE))
    assert_close(q.reshape(5, 4, 64), want_q)
    assert_close(k.reshape(5, 1, 64), want_k)
    assert torch.equal(v, v_before)


def test_empty_and_nonfinite():
    q, k, qw, kw, positions, cache = make_case(3, 2, 1, 16, torch.float32, max_pos=8)
    q[0, 1] = float("nan")
    k[2, 0, 3] = float("inf")
    want_q, want_k = hf_norm_rope(q.view(3, 2, 16), qw, positions, 1e-6), hf_norm_rope(k, kw, positions, 1e-6)
    qk_norm_rope_triton(q, k, qw, kw, positions, cache)
    assert_close(q.view(3, 2, 16), want_q)
    assert_close(k, want_k)
    empty = torch.empty(0, 32, device=DEVICE)
    out = qk_norm_rope_triton(empty, empty, qw, kw, torch.empty(0, dtype=torch.long, device=DEVICE), cache)
    assert out[0].shape == (0, 32)


def test_reference_dispatch_and_errors():
    q, k, qw, kw, positions, cache = make_case(3, 2, 1, 16, torch.float32, max_pos=8)
    q, k, qw, kw, positions, cache = (t.cpu() for t in (q, k, qw, kw, positions, cache))
    want_q, want_k = hf_norm_rope(q.view(3, 2, 16), qw, positions, 1e-6), hf_norm_rope(k, kw, positions, 1e-6)
    with use_backend("reference"):
        out_q, out_k = qk_norm_rope(q, k, qw, kw, positions, cache, 1e-6)
    assert out_q is q and out_k is k
    assert_close(q.view(3, 2, 16), want_q)
    assert_close(k, want_k)
    q2, k2 = torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    want = hf_norm_rope(q2, qw, positions[:2], 1e-6, False, 8)
    qk_norm_rope_reference(q2, k2, qw, kw, positions[:2], rope_cos_sin_cache(16, 8, 1e4), 1e-6, False)
    assert_close(q2, want)
    bad = [((q, k, qw, kw[:8], positions, cache), "q_weight and k_weight"),
           ((q, k, qw[:15], kw[:15], positions, cache), "q_weight and k_weight"),
           ((q, k, qw, kw, positions, cache[:, :8]), "whole head"),
           ((q, k, qw, kw, positions[:1], cache), "positions must have one entry"),
           ((q, k.half(), qw, kw, positions, cache), "k must match q"),
           ((q, k, qw, kw, positions, cache, 0.0), "eps"),
           ((q, k, qw[None], kw, positions, cache), "q_weight must have 1 dimensions")]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            qk_norm_rope(*args)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [1, 256, 4096, 32768])
def test_qwen3_shapes_gpu(tokens, dtype):
    q, k, qw, kw, positions, cache = make_case(tokens, 32, 8, 128, dtype, max_pos=40960)
    want_q, want_k = qk_norm_rope_reference(q.clone(), k.clone(), qw, kw, positions, cache)
    qk_norm_rope_triton(q, k, qw, kw, positions, cache)
    assert_close(q, want_q)
    assert_close(k, want_k)


# The store_kv form: the same launch also writes the rotated k and v into their paged-cache slots.

def make_store_case(tokens, hq, hk, head_dim, dtype, num_blocks, block_size, head_major, cache_dtype=None):
    """q, k, v as views of one fused QKV output; random caches (untouched slots must keep their values),
    in the engine's layout or head-major memory seen through a transpose; slots with -1 padding."""
    qkv = torch.randn(tokens, (hq + 2 * hk) * head_dim, device=DEVICE).to(dtype)
    q, k, v = qkv.split([hq * head_dim, hk * head_dim, hk * head_dim], dim=-1)
    shape = (num_blocks, hk, block_size, head_dim) if head_major else (num_blocks, block_size, hk, head_dim)
    caches = [torch.randn(shape, device=DEVICE).to(cache_dtype or dtype) for _ in range(2)]
    if head_major:
        caches = [c.transpose(1, 2) for c in caches]
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:tokens]
    slots[1::3] = -1
    return q, k, v, caches, slots


def expected_caches(k_rot, v, caches, slots):
    """The caches with token t's k/v rows written at slot slots[t] by hand (slot -1: not written)."""
    want = [c.clone() for c in caches]
    block_size = caches[0].shape[1]
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            want[0][slot // block_size, slot % block_size] = k_rot[t].to(want[0].dtype)
            want[1][slot // block_size, slot % block_size] = v[t].to(want[1].dtype)
    return want


@pytest.mark.parametrize("head_major", [False, True])
@pytest.mark.parametrize("dtype, cache_dtype", [(torch.float32, None), (torch.float16, None),
                                                (torch.float16, torch.float32)] + (
                                                   [(torch.bfloat16, None)] if ON_GPU else []))
def test_store_kv_form(dtype, cache_dtype, head_major):
    hq, hk, d = 4, 2, 32
    q, k, v, caches, slots = make_store_case(7, hq, hk, d, dtype, 4, 4, head_major, cache_dtype)
    positions = torch.randint(0, 64, (7,), device=DEVICE)
    qw, kw = (torch.rand(d, dtype=dtype, device=DEVICE) + 0.5 for _ in range(2))
    want_q, want_k = hf_norm_rope(q.reshape(7, hq, d), qw, positions, 1e-6), hf_norm_rope(k.reshape(7, hk, d), kw,
                                                                                         positions, 1e-6)
    v_before = v.clone()
    want_caches = expected_caches(want_k, v.reshape(7, hk, d), caches, slots)
    qk_norm_rope_triton(q, k, qw, kw, positions, rope_cos_sin_cache(d, 64, 1e6, device=DEVICE), 1e-6, True,
                        v=v, k_cache=caches[0], v_cache=caches[1], slot_mapping=slots)
    assert_close(q.reshape(7, hq, d), want_q)
    assert_close(k.reshape(7, hk, d), want_k)
    assert torch.equal(v, v_before)
    # the written k rows are exactly k as stored in place (cast to the cache dtype)
    assert torch.equal(caches[0], expected_caches(k.reshape(7, hk, d), v.reshape(7, hk, d), caches, slots)[0])
    for got, want in zip(caches, want_caches):
        assert_close(got, want, dtype=dtype)


def test_store_kv_form_reference_gptj_and_dispatch():
    q, k, v, caches, slots = make_store_case(5, 3, 1, 16, torch.float32, 3, 2, head_major=False)
    positions, cache = torch.arange(5, device=DEVICE), rope_cos_sin_cache(16, 8, 1e4, device=DEVICE)
    qw, kw = (torch.rand(16, device=DEVICE) + 0.5 for _ in range(2))
    want_k = hf_norm_rope(k.reshape(5, 1, 16), kw, positions, 1e-6, False, 8)
    want_caches = expected_caches(want_k, v.reshape(5, 1, 16), caches, slots)
    for backend in ("reference", "triton"):
        qq, kk, vv = q.clone(), k.clone(), v.clone()
        got = [c.clone() for c in caches]
        with use_backend(backend):
            qk_norm_rope(qq, kk, qw, kw, positions, cache, 1e-6, False, v=vv.view(5, 1, 16), k_cache=got[0],
                         v_cache=got[1], slot_mapping=slots.int())
        assert_close(kk.reshape(5, 1, 16), want_k)
        for g, w in zip(got, want_caches):
            assert_close(g, w)


def test_store_kv_form_errors():
    q, k, v, caches, slots = make_store_case(3, 2, 1, 16, torch.float32, 2, 4, head_major=False)
    args = (q, k, torch.ones(16, device=DEVICE), torch.ones(16, device=DEVICE), torch.arange(3, device=DEVICE),
            rope_cos_sin_cache(16, 8, 1e4, device=DEVICE))
    store = dict(v=v, k_cache=caches[0], v_cache=caches[1], slot_mapping=slots)
    bad = [(dict(store, slot_mapping=None), "must be given together"),
           (dict(v=v), "must be given together"),
           (dict(store, v=v[:, :8]), "v must be shaped and typed like k"),
           (dict(store, v=v.half()), "v must be shaped and typed like k"),
           (dict(store, v="v"), "v must be a torch.Tensor"),
           (dict(store, k_cache=caches[0][:, :, :, :8]), "v_cache must match k_cache"),
           (dict(store, k_cache=caches[0][:1, :1].expand(2, 4, 2, 16), v_cache=caches[1][:1, :1].expand(2, 4, 2, 16)),
            "to match the cache"),
           (dict(store, slot_mapping=slots[:2]), "one slot per token"),
           (dict(store, slot_mapping=slots.float()), "slot_mapping must have dtype"),
           (dict(store, k_cache=caches[0].to(torch.float8_e4m3fn), v_cache=caches[1].to(torch.float8_e4m3fn)),
            "fused KV write takes fp16/bf16/fp32 caches")]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            qk_norm_rope(*args, **kwargs)


@gpu_only
@pytest.mark.parametrize("tokens", [1, 256, 4096])
@pytest.mark.parametrize("head_major", [False, True])
def test_store_kv_form_qwen3_shapes_gpu(tokens, head_major):
    q, k, v, caches, slots = make_store_case(tokens, 32, 8, 128, torch.bfloat16, tokens // 8 + 2, 16, head_major)
    _, _, qw, kw, positions, cache = make_case(tokens, 32, 8, 128, torch.bfloat16, max_pos=40960)
    ref_q, ref_k, ref_v = q.clone(), k.clone(), v.clone()
    ref_caches = [c.contiguous() for c in caches]  # the reference store takes the engine's layout
    qk_norm_rope_reference(ref_q, ref_k, qw, kw, positions, cache, 1e-6, True, ref_v, *ref_caches, slots)
    qk_norm_rope_triton(q, k, qw, kw, positions, cache, 1e-6, True, v, *caches, slots)
    assert_close(q, ref_q)
    assert_close(k, ref_k)
    for got, want in zip(caches, ref_caches):
        assert_close(got, want)
