"""rotary_embedding and rope_cos_sin_cache vs HF transformers' rotary classes (Qwen3, Llama 3, GPT-J)."""
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, Qwen3Config
from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb as gptj_apply
from transformers.models.gptj.modeling_gptj import create_sinusoidal_positions
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding, apply_rotary_pos_emb

from flagstack.ops import rope_cos_sin_cache, rotary_embedding, use_backend
from flagstack.ops.rotary import rotary_embedding_reference, rotary_embedding_triton
from tests.ops.helpers import DEVICE, DTYPES, assert_close, gpu_only, rows_for_device

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def hf_cos_sin(head_dim, positions, theta=1e6, scaling=None):
    """HF's full-width cos/sin [T, head_dim] (fp32) for the positions."""
    if scaling is None:
        rope = Qwen3RotaryEmbedding(Qwen3Config(head_dim=head_dim, rope_parameters={"rope_type": "default",
                                                                                    "rope_theta": theta}))
    else:
        rope = LlamaRotaryEmbedding(LlamaConfig(head_dim=head_dim, rope_parameters={**scaling, "rope_theta": theta}))
    cos, sin = rope(torch.zeros(1), positions.cpu()[None])
    return cos[0].to(positions.device), sin[0].to(positions.device)


def hf_neox(x, positions, head_dim, rot_dim=None, scaling=None):
    """HF apply_rotary_pos_emb in fp32 on x [T, H, D], rotating the first rot_dim dims, cast back."""
    rot_dim = rot_dim or head_dim
    cos, sin = hf_cos_sin(rot_dim, positions, scaling=scaling)
    xf = x.float().transpose(0, 1)  # [H, T, D], cos broadcasts over heads
    rotated, _ = apply_rotary_pos_emb(xf[..., :rot_dim], xf[..., :rot_dim], cos, sin, unsqueeze_dim=0)
    return torch.cat([rotated, xf[..., rot_dim:]], -1).transpose(0, 1).to(x.dtype)


def hf_gptj(x, positions, rot_dim, max_pos):
    """GPT-J's interleaved rotation (base 10000) in fp32 on x [T, H, D]."""
    sincos = create_sinusoidal_positions(max_pos, rot_dim).to(x.device)[positions]
    sin, cos = sincos.chunk(2, dim=-1)
    xf = x.float()[None]  # [1, T, H, D]
    rotated = gptj_apply(xf[..., :rot_dim], sin[None], cos[None])
    return torch.cat([rotated, xf[..., rot_dim:]], -1)[0].to(x.dtype)


@pytest.mark.parametrize("scaling", [None, LLAMA3])
def test_cache_matches_hf(scaling):
    positions = torch.arange(0, 300, 7)
    cache = rope_cos_sin_cache(128, 300, 1e6, scaling)
    cos, sin = hf_cos_sin(128, positions, scaling=scaling)
    assert cache.shape == (300, 128) and cache.dtype == torch.float32
    assert_close(cache[positions, :64], cos[:, :64])
    assert_close(cache[positions, 64:], sin[:, :64])


def test_cache_linear_and_partial_and_errors():
    plain = rope_cos_sin_cache(64, 50, 1e4, rotary_dim=32)
    linear = rope_cos_sin_cache(64, 100, 1e4, {"type": "linear", "factor": 2.0}, rotary_dim=32)
    assert plain.shape == (50, 32)
    assert_close(linear[::2], plain)  # position 2p at factor 2 is position p unscaled
    assert rope_cos_sin_cache(8, 4, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="rope_scaling type"):
        rope_cos_sin_cache(64, 8, 1e4, {"rope_type": "yarn"})
    with pytest.raises(ValueError, match="rotary_dim"):
        rope_cos_sin_cache(64, 8, rotary_dim=33)
    with pytest.raises(ValueError, match="max_pos"):
        rope_cos_sin_cache(64, -1)
    with pytest.raises(ValueError, match="base"):
        rope_cos_sin_cache(64, 8, 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", rows_for_device([1, 3], [1, 256, 4096]))
@pytest.mark.parametrize("heads", [(32, 8), (3, 1)])
def test_neox_matches_hf(heads, tokens, dtype):
    hq, hk = heads
    positions = torch.randint(0, 500, (tokens,), device=DEVICE)
    cache = rope_cos_sin_cache(128, 500, 1e6, device=DEVICE)
    q = torch.randn(tokens, hq * 128, dtype=dtype, device=DEVICE)
    k = torch.randn(tokens, hk, 128, dtype=dtype, device=DEVICE)  # both layouts
    want_q, want_k = hf_neox(q.view(tokens, hq, 128), positions, 128), hf_neox(k, positions, 128)
    out_q, out_k = rotary_embedding_triton(positions, q, k, cache, 128)
    assert out_q is q and out_k is k
    assert_close(q.view(tokens, hq, 128), want_q)
    assert_close(k, want_k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gptj_and_partial_rotary(dtype):
    positions = torch.tensor([0, 5, 63, 17], device=DEVICE)
    q = torch.randn(4, 3, 80, dtype=dtype, device=DEVICE)
    k = torch.randn(4, 2 * 80, dtype=dtype, device=DEVICE)
    want_q, want_k = hf_gptj(q, positions, 32, 64), hf_gptj(k.view(4, 2, 80), positions, 32, 64)
    rotary_embedding_triton(positions, q, k, rope_cos_sin_cache(80, 64, 1e4, rotary_dim=32, device=DEVICE), 80,
                            is_neox=False)
    assert_close(q, want_q)
    assert_close(k.view(4, 2, 80), want_k)
    # NeoX with a partial, non-power-of-two rotary width: dims 40..79 stay as they were
    q = torch.randn(4, 3, 80, dtype=dtype, device=DEVICE)
    want = hf_neox(q, positions, 80, rot_dim=40)
    rotary_embedding_triton(positions, q, torch.empty(4, 0, 80, dtype=dtype, device=DEVICE),
                            rope_cos_sin_cache(80, 64, 1e6, rotary_dim=40, device=DEVICE), 80)
    assert_close(q, want)


def test_fused_qkv_views_llama3_and_nonfinite():
    tokens, hq, hk, d = 6, 4, 2, 64
    qkv = torch.randn(tokens, (hq + 2 * hk) * d, device=DEVICE)
    q, k, v = qkv.split([hq * d, hk * d, hk * d], dim=-1)  # strided token rows, written in place
    v_before = v.clone()
    q[0, 3] = float("nan")
    k[1, 0] = float("inf")
    positions = torch.tensor([3, 0, 1, 0, 4, 0, 1, 0, 5, 0, 9, 0], dtype=torch.int32, device=DEVICE)[::2]  # strided
    want_q = hf_neox(q.view(tokens, hq, d), positions.long(), d, scaling=LLAMA3)
    want_k = hf_neox(k.reshape(tokens, hk, d), positions.long(), d, scaling=LLAMA3)
    rotary_embedding_triton(positions, q, k, rope_cos_sin_cache(d, 16, 1e6, LLAMA3, device=DEVICE), d)
    assert_close(q.reshape(tokens, hq, d), want_q)
    assert_close(k.reshape(tokens, hk, d), want_k)
    assert torch.equal(v, v_before)
    empty = torch.empty(0, 8, device=DEVICE)
    assert rotary_embedding_triton(torch.empty(0, dtype=torch.long, device=DEVICE), empty, empty,
                                   rope_cos_sin_cache(8, 4, device=DEVICE), 8)[0].shape == (0, 8)


# Run in a child process without TRITON_INTERPRET (the interpreter patches triton.language for the CPU):
# ptxas's spill-store bytes for the kernel compiled for sm_90 (bf16) with the wrapper's warps, per
# (q heads, k heads, head_dim) in argv.
SPILLS_SM90 = """
import os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile as triton_compile
import flagstack.ops.rotary
rotary = sys.modules["flagstack.ops.rotary"]
ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
for shape in sys.argv[1:]:
    hq, hk, head_dim = map(int, shape.split(","))
    constants = {"IS_NEOX": True, "BLOCK_HQ": hq, "BLOCK_HK": hk, "BLOCK_D": head_dim // 2}
    types = {"pos_ptr": "*i64", "cache_ptr": "*fp32", "q_ptr": "*bf16", "k_ptr": "*bf16"}
    signature = {n: "constexpr" if n in constants else types.get(n, "i32") for n in rotary._rotary_kernel.arg_names}
    compiled = triton_compile(ASTSource(rotary._rotary_kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": rotary._warps(hq + hk, head_dim // 2)})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(compiled.asm["ptx"])
        ptx.flush()
        info = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", ptx.name, "-o", os.devnull],
                              capture_output=True, text=True, check=True).stderr
    print(re.search(r"(\\d+) bytes spill stores", info).group(1))
"""


def test_tile_fits_registers_sm90():
    """One program holds all of a token's heads in registers: no spills for sm_90 at Qwen3-4B (32 + 8
    heads of 128: 4 warps) and 128 + 8 heads of 128 (16 warps; 4 spilled 1.3 KB)."""
    pytest.importorskip("triton.backends.nvidia.compiler", reason="no CUDA backend in this triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", SPILLS_SM90, "32,8,128", "128,8,128"],
                         capture_output=True, text=True, env=env)
    if run.returncode and "ptxas" in run.stderr:  # no sm_90 assembler in this triton install
        pytest.skip(f"cannot compile for sm90 here: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", "0"]


def test_reference_dispatch_and_errors():
    positions = torch.tensor([2, 0, 7])
    cache = rope_cos_sin_cache(16, 8, 1e6)
    q, k = torch.randn(3, 32), torch.randn(3, 16)
    want_q, want_k = hf_neox(q.view(3, 2, 16), positions, 16), hf_neox(k.view(3, 1, 16), positions, 16)
    with use_backend("reference"):
        out_q, out_k = rotary_embedding(positions, q, k, cache, 16)
    assert out_q is q and out_k is k
    assert_close(q.view(3, 2, 16), want_q)
    assert_close(k.view(3, 1, 16), want_k)
    q2 = torch.randn(3, 2, 16)
    want = hf_gptj(q2, positions, 16, 8)
    rotary_embedding_reference(positions, q2, torch.randn(3, 1, 16), rope_cos_sin_cache(16, 8, 1e4), 16, False)
    assert_close(q2, want)
    bad = [((positions, q, k, cache, 0), "head_size"),
           ((positions, torch.randn(3, 30), k, cache, 16), "q must be"),
           ((positions, q, k.half(), cache, 16), "k must match q"),
           ((positions[:2], q, k, cache, 16), "positions must have one entry"),
           ((positions.float(), q, k, cache, 16), "positions must have dtype"),
           ((positions, q, k, torch.randn(8, 33), 16), "cos_sin_cache must be"),
           ((positions, q, k, torch.randn(8, 32), 16), "cos_sin_cache must be"),
           ((positions, torch.randn(32, 3).t(), k, cache, 16), "unit-stride"),
           ((positions, torch.randn(3, 2, 8), k, cache, 16), "q must be")]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            rotary_embedding(*args)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [1, 256, 4096, 32768])
@pytest.mark.parametrize("is_neox", [True, False])
def test_qwen3_shapes_gpu(tokens, dtype, is_neox):
    positions = torch.randint(0, 40960, (tokens,), device="cuda")
    cache = rope_cos_sin_cache(128, 40960, 1e6, device="cuda")
    q = torch.randn(tokens, 32 * 128, dtype=dtype, device="cuda")
    k = torch.randn(tokens, 8 * 128, dtype=dtype, device="cuda")
    want_q, want_k = rotary_embedding_reference(positions, q.clone(), k.clone(), cache, 128, is_neox)
    rotary_embedding_triton(positions, q, k, cache, 128, is_neox)
    assert_close(q, want_q)
    assert_close(k, want_k)
