"""qk_norm_rope vs HF transformers' Qwen3 pieces: Qwen3RMSNorm per head, then apply_rotary_pos_emb."""
import pytest
import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from flagstack.ops import qk_norm_rope, rope_cos_sin_cache, use_backend
from flagstack.ops.qk_norm_rope import qk_norm_rope_reference, qk_norm_rope_triton
from tests.ops.helpers import DEVICE, DTYPES, assert_close, gpu_only, rows_for_device
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
