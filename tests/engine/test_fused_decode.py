"""The decode fusions (FLAGSTACK_FUSED_DECODE): tiny Llama / Qwen3 models run over a paged cache with the
fusions forced on, every op a Triton kernel (the interpreter on CPU), against HF transformers; the fused
ops must actually run, and store_kv must not run where qk_norm_rope already stored k and v."""
import pytest
import torch

from flagstack.engine.loader import load_model
from flagstack.engine.models import layers
from flagstack.ops import attention as attn_ops
from flagstack.ops import use_backend
from tests.engine.model_helpers import PagedSteps, tiny_hf_model
from tests.ops.helpers import DEVICE, ON_GPU, assert_close, gpu_only


def count_calls(monkeypatch, owner, name: str) -> list:
    """Wrap owner.name so that each call appends to the returned list."""
    calls, fn = [], getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(1) or fn(*a, **k))
    return calls


def hf_logits(hf: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()


def test_switch_is_off_by_default_on_cpu():
    assert not layers.fused_decode(torch.zeros(1))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_fused_paths_match_hf(arch, tmp_path, monkeypatch):
    """One sequence: a 7-token prefill (Qwen3: k/v stored by qk_norm_rope), then two decode steps of one
    row (also silu_and_mul inside the down GEMV), over a head-major cache seen through a transpose."""
    hf = tiny_hf_model(arch)
    hf.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device=DEVICE, dtype=torch.float32)
    monkeypatch.setattr(layers, "FUSED_DECODE_DEVICES", ("cuda", "cpu"))
    fused_mlp = count_calls(monkeypatch, layers, "silu_mul_gemv")
    store_kv = count_calls(monkeypatch, attn_ops, "store_kv")
    run = PagedSteps(loaded.model, 1, 16, loaded.num_kv_heads, loaded.head_dim, device=DEVICE)
    for layer in loaded.model.attention_layers():
        blocks, block_size, heads, dim = layer.k_cache.shape
        layer.k_cache, layer.v_cache = (torch.zeros(blocks, heads, block_size, dim, device=DEVICE).transpose(1, 2)
                                        for _ in range(2))
    tokens = [5, 17, 3, 90, 2, 2, 41]
    atol = 5e-3 if ON_GPU else 1e-4  # fp32 tl.dot runs as TF32 on a GPU (as in test_models)
    with use_backend("triton"):
        logits = run.step([tokens])
        assert_close(logits, hf_logits(hf, tokens), atol=atol)
        for _ in range(2):
            tokens.append(int(logits[-1].argmax()))  # greedy: the token just predicted goes in next
            logits = run.step([tokens[-1:]])
            assert_close(logits[0], hf_logits(hf, tokens)[-1], atol=atol)
    layers_n, steps = len(loaded.model.attention_layers()), 3
    assert len(fused_mlp) == 2 * layers_n  # the two one-row decode steps, not the prefill
    assert len(store_kv) == (0 if arch == "qwen3" else steps * layers_n)


@gpu_only
def test_qwen3_4b_fused_equals_unfused(monkeypatch):
    """Qwen3-4B shapes, bf16: the fused engine path gives the unfused path's logits (same roundings)."""
    loaded = load_model("qwen3-4b", load_format="dummy", device="cuda")
    prompt = list(range(1, 40))
    results = {}
    for devices in ((), ("cuda",)):
        monkeypatch.setattr(layers, "FUSED_DECODE_DEVICES", devices)
        run = PagedSteps(loaded.model, 1, 64, loaded.num_kv_heads, loaded.head_dim, block_size=16,
                         dtype=torch.bfloat16, device="cuda")
        logits = [run.step([prompt])[-1:]]
        for step in range(4):
            logits.append(run.step([[7 + step]]))
        results[devices] = torch.cat(logits)
        del run
    unfused, fused = results[()], results[("cuda",)]
    assert torch.isfinite(fused).all()
    assert_close(fused, unfused, dtype=torch.bfloat16, atol=3e-2)
    assert torch.equal(fused.argmax(-1), unfused.argmax(-1))
