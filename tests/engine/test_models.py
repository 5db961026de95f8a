"""Models vs HF transformers: tiny random Llama / Qwen3 checkpoints saved as sharded safetensors, loaded
by flagstack's loader, run over a paged KV cache (packed prefill, mixed chunk + decode, pure decode)."""
import copy

import pytest
import torch

from flagstack.engine.context import AttentionMetadata, step_context
from flagstack.engine.loader import load_model
from flagstack.ops import use_backend
from tests.engine.model_helpers import VOCAB, PagedSteps, tiny_hf_model
from tests.ops.helpers import DEVICE, ON_GPU, assert_close, gpu_only

@pytest.fixture(scope="module", params=["llama", "qwen3"])
def checkpoint(request, tmp_path_factory):
    hf = tiny_hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path, max_shard_size="40KB")  # several shards, q/k/v of one layer split across them
    assert len(list(path.glob("*.safetensors"))) > 3
    return request.param, hf, path


def hf_logits(hf: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()


def test_loaded_model_fields(checkpoint):
    arch, hf, path = checkpoint
    loaded = load_model(str(path))
    assert type(loaded.model).__name__ == type(hf).__name__
    assert (loaded.num_layers, loaded.num_kv_heads, loaded.max_model_len) == (2, 2, 64)
    assert loaded.head_dim == (16 if arch == "llama" else 32)
    assert loaded.eos_token_ids == ([3, 5] if arch == "llama" else [7])
    assert loaded.dtype == torch.float32 and loaded.tokenizer is None  # the tiny dir has no tokenizer files
    assert len(loaded.model.attention_layers()) == 2
    assert (loaded.model.lm_head_weight is loaded.model.model.embed_tokens.weight) == (arch == "qwen3")
    half = load_model(str(path), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_paged_steps_match_hf(checkpoint):
    arch, hf, path = checkpoint
    loaded = load_model(str(path))
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in (5, 11, 3)]
    run = PagedSteps(loaded.model, 3, 32, loaded.num_kv_heads, loaded.head_dim)

    # step 1: packed prefill of three prompts (pages are not contiguous, prompts cross page borders)
    logits = run.step(prompts)
    assert_close(logits, torch.cat([hf_logits(hf, p) for p in prompts]))

    # step 2: mixed -- seq 0 decodes one token, seq 1 brings a 4-token chunk over its cached prefix, seq 2 idles
    new = [[int(logits[4].argmax())], [9, 1, 2, 40], []]
    logits = run.step(new)
    full = [p + n for p, n in zip(prompts, new)]
    assert_close(logits, torch.cat([hf_logits(hf, full[0])[-1:], hf_logits(hf, full[1])[-4:]]))

    # steps 3-4: pure decode of all three (the paged decode path), greedy tokens fed back
    for _ in range(2):
        ref = [hf_logits(hf, seq)[-1] for seq in full]
        new = [[int(r.argmax())] for r in ref]
        full = [seq + n for seq, n in zip(full, new)]
        logits = run.step(new)
        assert_close(logits, torch.stack([hf_logits(hf, seq)[-1] for seq in full]))


def test_last_layer_on_last_rows_matches_hf(checkpoint):
    """forward(rows=...): the last layer runs only each sequence's last new token (after storing every
    row's K/V), in a packed prefill and in a mixed decode + chunk step; the next step reads that K/V."""
    _, hf, path = checkpoint
    loaded = load_model(str(path))
    prompts, chunk = [[5, 17, 3, 90, 2, 2, 41], [60, 7, 11]], [[4], [9, 1, 2, 40, 8]]
    run = PagedSteps(loaded.model, 2, 32, loaded.num_kv_heads, loaded.head_dim)
    assert_close(run.step(prompts, last_only=True), torch.stack([hf_logits(hf, p)[-1] for p in prompts]))
    full = [p + c for p, c in zip(prompts, chunk)]
    assert_close(run.step(chunk, last_only=True), torch.stack([hf_logits(hf, f)[-1] for f in full]))
    assert_close(run.step([[6], [6]]), torch.stack([hf_logits(hf, f + [6])[-1] for f in full]))


def test_rows_without_rows_meta_fail_clearly(checkpoint):
    _, _, path = checkpoint
    loaded = load_model(str(path))
    run = PagedSteps(loaded.model, 1, 16, loaded.num_kv_heads, loaded.head_dim)
    meta = AttentionMetadata(torch.arange(3), torch.tensor([0, 3], dtype=torch.int32),
                             torch.tensor([3], dtype=torch.int32), run.block_tables, 3, 3)
    with pytest.raises(RuntimeError, match="rows_meta"), torch.inference_mode(), step_context(meta):
        loaded.model(torch.tensor([1, 2, 3]), torch.arange(3), torch.tensor([2]))


def test_dummy_weights_seeded_and_finite(checkpoint):
    arch, _, path = checkpoint
    first, second = (load_model(str(path), load_format="dummy") for _ in range(2))
    for (name, a), b in zip(first.model.named_parameters(), second.model.parameters()):
        assert torch.equal(a, b), name
        if name.endswith("norm.weight"):
            assert torch.all(a == 1)
    logits = PagedSteps(first.model, 1, 8, first.num_kv_heads, first.head_dim).step([[1, 2, 3, 4, 5]])
    assert logits.shape == (5, VOCAB) and torch.isfinite(logits).all() and logits.std() > 0


def test_triton_path_matches_hf(checkpoint):
    """The same steps with every op forced to its Triton kernel (the interpreter on CPU, the GPU on CUDA)."""
    _, hf, path = checkpoint
    loaded = load_model(str(path), device=DEVICE, dtype=torch.float32)
    prompts, new = [[5, 17, 3, 90, 2, 2, 41], [60, 7]], [[4], [9]]
    # fp32 tl.dot runs as TF32 on a GPU: ~1e-3 relative error in attention
    atol = 5e-3 if ON_GPU else 1e-4
    with use_backend("triton"):
        run = PagedSteps(loaded.model, 2, 16, loaded.num_kv_heads, loaded.head_dim, device=DEVICE)
        prefill, decode = run.step(prompts), run.step(new)
    assert_close(prefill, torch.cat([hf_logits(hf, p) for p in prompts]), atol=atol)
    assert_close(decode, torch.stack([hf_logits(hf, p + n)[-1] for p, n in zip(prompts, new)]), atol=atol)


@gpu_only
def test_bf16_on_gpu_matches_hf_bf16(checkpoint):
    _, hf, path = checkpoint
    loaded = load_model(str(path), device="cuda", dtype=torch.bfloat16)
    hf_gpu = copy.deepcopy(hf).to("cuda", torch.bfloat16)
    prompts = [[5, 17, 3, 90, 2, 2, 41], [60, 7]]
    logits = PagedSteps(loaded.model, 2, 16, loaded.num_kv_heads, loaded.head_dim, dtype=torch.bfloat16,
                        device="cuda").step(prompts)
    with torch.no_grad():
        ref = torch.cat([hf_gpu(torch.tensor([p], device="cuda")).logits[0].float().cpu() for p in prompts])
    # logits are O(1); fused kernels round at different points than HF's eager ops: a few bf16 ulps
    assert_close(logits, ref, dtype=torch.bfloat16, atol=3e-2)


@gpu_only
def test_qwen3_4b_dummy_runs_on_gpu():
    loaded = load_model("qwen3-4b", load_format="dummy", device="cuda")
    run = PagedSteps(loaded.model, 2, 64, loaded.num_kv_heads, loaded.head_dim, block_size=16,
                     dtype=torch.bfloat16, device="cuda")
    prefill = run.step([list(range(1, 40)), list(range(100, 117))])
    decode = run.step([[7], [8]])
    assert prefill.shape == (56, 151936) and decode.shape == (2, 151936)
    assert torch.isfinite(prefill).all() and torch.isfinite(decode).all()


@pytest.mark.parametrize("rows", [0, 1, 2, 7, 64, 65])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_small_batch_form_matches_f_linear(rows, bias):
    """The CPU (W @ x^T)^T form of decode-sized GEMMs: same values as F.linear, contiguous rows."""
    from flagstack.engine.models.layers import linear

    torch.manual_seed(rows)
    x = torch.randn(rows, 48)[:, 5:45]  # a non-contiguous input
    weight, b = torch.randn(24, 40), (torch.randn(24) if bias else None)
    out = linear(x, weight, b)
    assert out.shape == (rows, 24) and out.is_contiguous()
    assert_close(out, torch.nn.functional.linear(x, weight, b), atol=1e-5)
